"use strict";
const $ = (id) => document.getElementById(id);
const serviceHooks = {};  // service id -> hook, from the discovery document
let lastCards = [];  // the cards on screen, for the suggestion buttons
let lastService = "";

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

function renderCard(card, index) {
  const suggestions = (card.suggestions || []).map((s, i) =>
    `<button type="button" class="suggestion" data-card="${index}" data-suggestion="${i}" aria-expanded="false">${escapeHtml(s.label)}</button>`).join("");
  const links = (card.links || []).map((l) => `<a href="${escapeHtml(l.url)}" rel="noopener">${escapeHtml(l.label)}</a>`).join(" · ");
  const reasons = (card.overrideReasons || []).map((r) => escapeHtml(r.display || r.code)).join("; ");
  const topic = card.source.topic ? ` · rule ${escapeHtml(card.source.topic.code)}` : "";
  return `<article class="card ${escapeHtml(card.indicator)}" data-rule="${escapeHtml(card.source.topic ? card.source.topic.code : "")}">
    <div class="indicator">${escapeHtml(card.indicator)}</div>
    <h3>${escapeHtml(card.summary)}</h3>
    <div class="detail">${markdown(card.detail)}</div>
    ${suggestions ? `<div class="suggestions">${suggestions}</div><div class="accepted" hidden></div>` : ""}
    ${links ? `<p>${links}</p>` : ""}
    ${reasons ? `<p class="override">Override reasons: ${reasons}</p>` : ""}
    <div class="source">${escapeHtml(card.source.label)}${topic}</div>
  </article>`;
}

// What accepting a suggestion would do in an EHR: each action's resource (create/update) or the id it
// deletes, and the feedback the EHR would send back. Nothing is sent from this page.
function describeAcceptance(card, suggestion) {
  const actions = (suggestion.actions || []).map((a) => {
    const what = a.type === "delete" ? `delete ${escapeHtml(a.resourceId || "")}`
      : `${escapeHtml(a.type)} ${escapeHtml((a.resource || {}).resourceType || "resource")}`;
    const body = a.resource ? `<pre class="json">${escapeHtml(JSON.stringify(a.resource, null, 2))}</pre>` : "";
    return `<li><strong>${what}</strong>${a.description ? `: ${escapeHtml(a.description)}` : ""}${body}</li>`;
  }).join("") || "<li>no actions</li>";
  const feedback = { feedback: [{ card: card.uuid, outcome: "accepted", acceptedSuggestions: [{ id: suggestion.uuid }],
    outcomeTimestamp: new Date().toISOString() }] };
  const url = `/cds-services/${encodeURIComponent(lastService)}/feedback`;
  return `<h4>Accepting “${escapeHtml(suggestion.label)}” would</h4><ul class="actions">${actions}</ul>
    <p>and the EHR would send this feedback to <code>${escapeHtml(url)}</code>:</p>
    <pre class="json feedback">${escapeHtml(JSON.stringify(feedback, null, 2))}</pre>`;
}

function showAcceptance(button) {
  const card = lastCards[Number(button.dataset.card)];
  const suggestion = card.suggestions[Number(button.dataset.suggestion)];
  const panel = button.closest("article").querySelector(".accepted");
  const open = button.getAttribute("aria-expanded") === "true";
  for (const b of button.closest(".suggestions").querySelectorAll("button")) b.setAttribute("aria-expanded", "false");
  panel.hidden = open;
  panel.innerHTML = open ? "" : describeAcceptance(card, suggestion);
  button.setAttribute("aria-expanded", String(!open));
}

// "IgA: no result in the last 12 months" -> ["IgA", "no result in the last 12 months"]
function splitLab(line) {
  const at = line.indexOf(": ");
  return at < 0 ? [line, ""] : [line.slice(0, at), line.slice(at + 2)];
}

// LabStatus.describe() wording of the statuses that carry no usable result (missing, unavailable,
// unknown, not-a-result), as opposed to a result, a pending order or a stale result.
const NO_RESULT = /^(no result|no usable result|lab data could not|may be incomplete|not a result|unknown)/i;

// Labs found are listed one per line first; labs without a usable result are grouped by what was
// said about them ("no result in the last 12 months: IgA, IgG, ...").
function renderLabs(labs) {
  const found = [];
  const groups = new Map();
  for (const line of Object.values(labs || {})) {
    const [name, status] = splitLab(String(line));
    if (NO_RESULT.test(status)) {
      groups.set(status, [...(groups.get(status) || []), name]);
    } else {
      found.push(line);
    }
  }
  const items = found.map((t) => `<li class="found">${escapeHtml(t)}</li>`);
  for (const [status, names] of groups) {
    items.push(`<li class="missing"><span class="status">${escapeHtml(status[0].toUpperCase() + status.slice(1))}</span>: ${escapeHtml(names.join(", "))}</li>`);
  }
  return items.join("") || "<li>none</li>";
}

// order-sign: why each card is shown or left out (cds_service/repeats.py: overridden at order-select).
function renderRepeats(repeats) {
  if (!repeats) return "";
  const items = (repeats.decisions || []).map((d) => `<li class="${d.suppressed ? "suppressed" : "shown"}">
    <span class="rule">${escapeHtml(d.rule_id || "card")}</span>: ${d.suppressed ? "left out" : "shown"} (${escapeHtml(d.reason)})</li>`);
  if (repeats.error) items.push(`<li class="error">${escapeHtml(repeats.error)}</li>`);
  return `<dt>Repeats at signing</dt><dd><ul class="repeats">${items.join("") || "<li>no cards</li>"}</ul></dd>`;
}

function renderExplain(state) {
  if (!state || state.resourceType === "OperationOutcome") return "";
  const rows = [["MG present", state.mg_present ? "yes" : "no"], ["Grade", state.grade_explanation]];
  const meds = (state.medications || []).map((t) => `<li>${escapeHtml(t)}</li>`).join("") || "<li>none classified</li>";
  const body = state.body_size || {};
  const dq = (state.data_quality || []).map((t) => `<li>${escapeHtml(t)}</li>`).join("");
  return `<dl class="explain">${rows.map(([k, v]) => `<dt>${k}</dt><dd>${escapeHtml(v)}</dd>`).join("")}
    <dt>Body size</dt><dd>weight ${escapeHtml(body.weight_kg ?? "unknown")} kg, height ${escapeHtml(body.height_cm ?? "unknown")} cm, BSA ${escapeHtml(body.bsa_m2 ?? "unknown")} m²</dd>
    <dt>Labs (last 12 months)</dt><dd><ul class="labs">${renderLabs(state.labs_last_12_months)}</ul></dd>
    <dt>Medications</dt><dd><ul>${meds}</ul></dd>
    ${dq ? `<dt>Data quality</dt><dd><ul>${dq}</ul></dd>` : ""}${renderRepeats(state.repeats)}</dl>`;
}

async function loadServices() {
  const { services } = await (await fetch("/cds-services")).json();
  for (const s of services) {
    serviceHooks[s.id] = s.hook;
    const opt = document.createElement("option");
    opt.value = s.id; opt.textContent = `${s.id} (${s.hook})`;
    $("service").appendChild(opt);
  }
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

// An error answer in plain words; the OperationOutcome itself stays one click away.
function plainError(status, service, result, hint) {
  const issue = ((result && result.issue) || [])[0] || {};
  const reason = (issue.details && issue.details.text) || issue.diagnostics || `HTTP ${status}`;
  const lead = status === 404 ? `There is no service “${service}”.`
    : status === 400 ? `${service} refused this request: ${reason}.`
      : status === 412 ? `${service} could not get the patient's data it needs: ${reason}.`
        : `${service} answered HTTP ${status}: ${reason}.`;
  return `<div class="error" role="alert"><p>${escapeHtml(lead)}</p>${hint ? `<p>${escapeHtml(hint)}</p>` : ""}
    <details><summary>Response body</summary><pre class="json">${escapeHtml(JSON.stringify(result, null, 2))}</pre></details></div>`;
}

function showError(html, status) {
  $("cards").innerHTML = html;
  $("explain").innerHTML = "";
  $("status").textContent = status;
}

async function send() {
  const service = $("service").value;
  lastCards = [];
  lastService = service;
  $("cards").innerHTML = "";
  $("explain").innerHTML = "";
  $("status").textContent = "Sending…";
  let body;
  try { body = JSON.parse($("request").value); } catch (e) {
    showError(`<div class="error" role="alert"><p>The request is not valid JSON: ${escapeHtml(e.message)}</p></div>`,
      "Not sent: the request is not valid JSON");
    return;
  }
  const post = (url) => fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  let resp;
  let explained;
  try {
    [resp, explained] = await Promise.all([post(`/cds-services/${encodeURIComponent(service)}`),
      post(`/preview-api/explain/${encodeURIComponent(service)}`)]);
  } catch (e) {
    showError(`<div class="error" role="alert"><p>The service could not be reached: ${escapeHtml(e.message)}</p></div>`, "Not answered");
    return;
  }
  const result = await resp.json().catch(() => null);
  if (!resp.ok) {
    const expected = serviceHooks[service];
    const hint = body && typeof body.hook === "string" && expected && body.hook !== expected
      ? `This request is a ${body.hook} call and ${service} answers ${expected}: pick the service for ${body.hook}.` : "";
    showError(plainError(resp.status, service, result, hint), `HTTP ${resp.status}`);
    return;
  }
  lastCards = result.cards;
  $("cards").innerHTML = result.cards.length ? result.cards.map(renderCard).join("") : "<p class=\"muted\">No cards.</p>";
  $("status").textContent = `${result.cards.length} card(s) from ${service}`;
  $("explain").innerHTML = explained.ok ? renderExplain(await explained.json()) : "";
}

$("scenario").addEventListener("change", pickScenario);
$("send").addEventListener("click", send);
$("cards").addEventListener("click", (event) => {
  const button = event.target.closest("button.suggestion");
  if (button) showAcceptance(button);
});
loadServices().then(loadScenarios);
