"use strict";
const $ = (id) => document.getElementById(id);

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

// A small, safe markdown subset: paragraphs, "- " lists, **bold**, *italic*.
function markdown(text) {
  const inline = (s) => escapeHtml(s).replace(/\*\*(.+?)\*\*/g, "<strong>$1</strong>").replace(/\*(.+?)\*/g, "<em>$1</em>");
  const out = [];
  let list = false;
  for (const line of String(text || "").split("\n")) {
    if (line.startsWith("- ")) {
      if (!list) { out.push("<ul>"); list = true; }
      out.push(`<li>${inline(line.slice(2))}</li>`);
      continue;
    }
    if (list) { out.push("</ul>"); list = false; }
    if (line.trim()) out.push(`<p>${inline(line)}</p>`);
  }
  if (list) out.push("</ul>");
  return out.join("");
}

function renderCard(card) {
  const suggestions = (card.suggestions || []).map((s) =>
    `<button type="button" class="suggestion" title="${escapeHtml((s.actions || []).map((a) => a.type).join(", "))}">${escapeHtml(s.label)}</button>`).join("");
  const links = (card.links || []).map((l) => `<a href="${escapeHtml(l.url)}" rel="noopener">${escapeHtml(l.label)}</a>`).join(" · ");
  const reasons = (card.overrideReasons || []).map((r) => escapeHtml(r.display || r.code)).join("; ");
  const topic = card.source.topic ? ` · rule ${escapeHtml(card.source.topic.code)}` : "";
  return `<article class="card ${escapeHtml(card.indicator)}" data-rule="${escapeHtml(card.source.topic ? card.source.topic.code : "")}">
    <div class="indicator">${escapeHtml(card.indicator)}</div>
    <h3>${escapeHtml(card.summary)}</h3>
    <div class="detail">${markdown(card.detail)}</div>
    ${suggestions ? `<div class="suggestions">${suggestions}</div>` : ""}
    ${links ? `<p>${links}</p>` : ""}
    ${reasons ? `<p class="override">Override reasons: ${reasons}</p>` : ""}
    <div class="source">${escapeHtml(card.source.label)}${topic}</div>
  </article>`;
}

function renderExplain(state) {
  if (!state || state.resourceType === "OperationOutcome") return "";
  const rows = [["MG present", state.mg_present ? "yes" : "no"], ["Grade", state.grade_explanation]];
  const labs = Object.values(state.labs_last_12_months || {}).map((t) => `<li>${escapeHtml(t)}</li>`).join("");
  const meds = (state.medications || []).map((t) => `<li>${escapeHtml(t)}</li>`).join("") || "<li>none classified</li>";
  const body = state.body_size || {};
  const dq = (state.data_quality || []).map((t) => `<li>${escapeHtml(t)}</li>`).join("");
  return `<dl class="explain">${rows.map(([k, v]) => `<dt>${k}</dt><dd>${escapeHtml(v)}</dd>`).join("")}
    <dt>Body size</dt><dd>weight ${escapeHtml(body.weight_kg ?? "unknown")} kg, height ${escapeHtml(body.height_cm ?? "unknown")} cm, BSA ${escapeHtml(body.bsa_m2 ?? "unknown")} m²</dd>
    <dt>Labs (last 12 months)</dt><dd><ul>${labs}</ul></dd>
    <dt>Medications</dt><dd><ul>${meds}</ul></dd>
    ${dq ? `<dt>Data quality</dt><dd><ul>${dq}</ul></dd>` : ""}</dl>`;
}

async function loadScenarios() {
  const list = await (await fetch("/preview-api/scenarios")).json();
  for (const s of list) {
    const opt = document.createElement("option");
    opt.value = s.name; opt.textContent = s.name; opt.dataset.service = s.service; opt.dataset.description = s.description;
    $("scenario").appendChild(opt);
  }
}

async function pickScenario() {
  const opt = $("scenario").selectedOptions[0];
  $("scenario-description").textContent = opt.dataset.description || "";
  if (!opt.value) return;
  if (opt.dataset.service) $("service").value = opt.dataset.service;
  $("request").value = JSON.stringify(await (await fetch(`/preview-api/scenarios/${encodeURIComponent(opt.value)}`)).json(), null, 2);
}

async function send() {
  const service = $("service").value;
  $("status").textContent = "Sending…";
  let body;
  try { body = JSON.parse($("request").value); } catch (e) { $("status").textContent = `Request is not valid JSON: ${e.message}`; return; }
  const post = (url) => fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const [resp, explained] = await Promise.all([post(`/cds-services/${service}`), post(`/preview-api/explain/${service}`)]);
  const result = await resp.json();
  if (!resp.ok) {
    $("cards").innerHTML = `<pre class="error">${escapeHtml(JSON.stringify(result, null, 2))}</pre>`;
    $("status").textContent = `HTTP ${resp.status}`;
  } else {
    $("cards").innerHTML = result.cards.length ? result.cards.map(renderCard).join("") : "<p class=\"muted\">No cards.</p>";
    $("status").textContent = `${result.cards.length} card(s) from ${service}`;
  }
  $("explain").innerHTML = explained.ok ? renderExplain(await explained.json()) : "";
}

$("scenario").addEventListener("change", pickScenario);
$("send").addEventListener("click", send);
loadScenarios();
