// arbor's admin UI: one node's admin API in a page. No build step, no dependencies.
// Every text from the node goes into the DOM through textContent (see el()), never as
// HTML. The admin token lives in sessionStorage and goes with every API call.
'use strict';

const TOKEN_KEY = 'arbor-admin-token';
const POLL_MS = 1000;
const STATES = ['available', 'downloading', 'downloaded', 'installed', 'failed'];

const $ = (id) => document.getElementById(id);

let token = sessionStorage.getItem(TOKEN_KEY);
let timer = null;
let polling = false;
// A refresh asked for while one was under way: run it as soon as that one ends.
let again = false;
// The last data each section was drawn from: a section is redrawn only when it changed,
// so that nothing under the pointer is replaced every second.
const drawn = {};
// Update id -> module name, from whichever answer named it.
const modules = new Map();

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// ---- helpers ---------------------------------------------------------------

// el('li', {class: 'x', title: t}, 'text', child, ...): attributes by setAttribute,
// children as nodes or text nodes.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function setText(id, text) {
  $(id).textContent = text;
}

function shortId(id) {
  if (typeof id !== 'string') return '?';
  return id.length > 16 ? `${id.slice(0, 4)}…${id.slice(-8)}` : id;
}

// A node id, shortened, the whole id in its title.
function nodeId(id, extra) {
  return el('span', { class: 'mono id', title: id }, shortId(id), extra);
}

function updateLabel(updateId, module) {
  const name = module || modules.get(updateId);
  return el('span', { title: updateId },
    name ? `${name} ` : '', el('span', { class: 'mono muted' }, shortId(updateId)));
}

function bytes(n) {
  if (typeof n !== 'number') return '?';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

function time(unix) {
  if (typeof unix !== 'number') return '—';
  const d = new Date(unix * 1000);
  if (Number.isNaN(d.getTime())) return String(unix);
  return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
}

// A number of seconds, short: 45s, 12m, 3h, 2d.
function ago(secs) {
  if (typeof secs !== 'number') return '?';
  if (secs < 60) return `${secs}s`;
  if (secs < 3600) return `${Math.floor(secs / 60)}m`;
  if (secs < 86400) return `${Math.floor(secs / 3600)}h`;
  return `${Math.floor(secs / 86400)}d`;
}

function percent(part, whole) {
  return whole > 0 ? Math.floor((100 * part) / whole) : 0;
}

// Replaces `container`'s content when `data` differs from what it was drawn from.
function draw(key, container, data, render) {
  const json = JSON.stringify(data);
  if (drawn[key] === json) return;
  drawn[key] = json;
  container.replaceChildren(...[render(data)].flat());
}

// Fills a <select> with [value, label] pairs, keeping the selection where it can.
function fillSelect(select, options, placeholder) {
  const json = JSON.stringify([options, placeholder]);
  if (select.dataset.options === json) return;
  select.dataset.options = json;
  const keep = new Set([...select.selectedOptions].map((o) => o.value));
  const items = options.map(([value, label]) =>
    el('option', { value, selected: keep.has(value) }, label));
  // Without a placeholder, a single select would quietly choose its first option.
  if (placeholder !== undefined && !select.multiple) {
    const kept = options.some(([value]) => keep.has(value));
    items.unshift(el('option', { value: '', disabled: true, selected: !kept }, placeholder));
  }
  select.replaceChildren(...items);
}

// ---- the API ---------------------------------------------------------------

async function api(method, path, body) {
  const init = { method, headers: { Authorization: `Bearer ${token}` }, cache: 'no-store' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, `cannot reach the node: ${e.message}`);
  }
  let data = null;
  try {
    data = await resp.json();
  } catch (e) {
    // not JSON: the status says enough
  }
  const message = data && typeof data.error === 'string'
    ? data.error : `the node answered ${resp.status} ${resp.statusText}`;
  if (resp.status === 401) {
    logout(`The node refused the admin token: ${message}`);
    throw new ApiError(401, message);
  }
  if (!resp.ok) throw new ApiError(resp.status, message);
  return data;
}

const seg = encodeURIComponent;

// ---- errors and actions ----------------------------------------------------

function showError(message) {
  setText('error-text', message);
  $('error').hidden = false;
}

function clearError() {
  $('error').hidden = true;
  setText('error-text', '');
}

// Runs one operator action: shows the node's refusal, refreshes on success.
async function act(button, action) {
  if (button) button.disabled = true;
  try {
    const result = await action();
    clearError();
    await poll();
    return result;
  } catch (e) {
    if (e.status !== 401) showError(e.message);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

// ---- login -----------------------------------------------------------------

function showLogin(message) {
  $('app').hidden = true;
  $('logout-button').hidden = true;
  $('login').hidden = false;
  $('login-error').hidden = !message;
  setText('login-error', message || '');
  setText('poll-status', '');
  $('token-input').focus();
}

function logout(message) {
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  clearTimeout(timer);
  for (const k of Object.keys(drawn)) delete drawn[k];
  showLogin(message);
}

async function login(given) {
  token = given;
  try {
    await api('GET', '/api/status');
  } catch (e) {
    if (e.status !== 401) {
      token = null;
      showLogin(e.message);
    }
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $('token-input').value = '';
  $('login').hidden = true;
  $('login-error').hidden = true;
  $('app').hidden = false;
  $('logout-button').hidden = false;
  await poll();
}

// ---- polling ---------------------------------------------------------------

function schedule() {
  clearTimeout(timer);
  if (token && !document.hidden) timer = setTimeout(poll, POLL_MS);
}

// One answer, or an ApiError in its place (so one missing endpoint hides nothing else).
function get(path) {
  return api('GET', path).catch((e) => e);
}

async function poll() {
  if (!token) return;
  if (polling) {
    again = true;
    return;
  }
  polling = true;
  try {
    const [status, groups, approvals, updates, tree] = await Promise.all(
      ['/api/status', '/api/groups', '/api/approvals', '/api/updates', '/api/tree'].map(get));
    if (!token) return;
    if (status instanceof ApiError) {
      setText('poll-status', status.message);
      $('poll-status').className = 'bad';
      return;
    }
    setText('poll-status', `updated ${new Date().toLocaleTimeString()}`);
    $('poll-status').className = 'muted';
    for (const u of status.updates || []) if (u.module) modules.set(u.update_id, u.module);
    if (!(updates instanceof ApiError)) {
      for (const u of updates.updates || []) if (u.module) modules.set(u.update_id, u.module);
    }
    renderNode(status);
    renderTree(tree);
    renderUpdates(updates);
    renderGroups(groups, status);
    renderApprovals(approvals, updates, status, groups);
    renderTokenForm(groups);
  } finally {
    polling = false;
    if (again) {
      again = false;
      poll();
    } else {
      schedule();
    }
  }
}

function unavailable(e) {
  return el('p', { class: 'message error' }, `Not available: ${e.message}`);
}

// ---- sections --------------------------------------------------------------

function renderNode(s) {
  setText('node-id', s.node_id);
  setText('node-role', s.root ? 'root' : 'member');
  const parent = $('node-parent');
  const p = s.parent;
  const shown = p ? [p.node_id, p.connected, p.addr] : null;
  draw('parent', parent, shown, () => (p
    ? [nodeId(p.node_id), ' ',
      el('span', { class: p.connected ? 'ok' : 'bad' }, p.connected ? 'connected' : 'not connected'),
      p.addr ? el('span', { class: 'mono muted' }, ` ${p.addr}`) : '']
    : 'none (this is the root)'));
  setText('node-admin', s.admin || '');
  for (const [id, n] of [['node-bad-chunks', s.bad_chunks], ['node-refused', s.refused],
    ['node-rules-refused', s.rules_refused]]) {
    setText(id, String(n ?? '?'));
    $(id).className = n > 0 ? 'bad' : '';
  }
}

function stateText(u) {
  switch (u.state) {
    case 'downloading': return `downloading ${percent(u.bytes_done, u.bytes_total)}%`;
    // A failure its node did not sign (or not through this part of the tree) is only
    // a claim: shown, but no halt counts it.
    case 'failed': return `failed: ${u.reason || 'no reason given'}${u.proven === false ? ' (not proven)' : ''}`;
    // A client's note on what its installer did ("installed in place of 1.0").
    default: return u.reason ? `${u.state} (${u.reason})` : String(u.state);
  }
}

function treeNode(n, top) {
  const states = (n.updates || []).map((u) => el('li', {
    class: `state ${STATES.includes(u.state) ? u.state : ''}`,
    'data-tree-update': u.update_id,
    'data-state': u.state,
    title: `${u.update_id}: ${bytes(u.bytes_done)} of ${bytes(u.bytes_total)}` +
      ` (${bytes(u.from_parent)} from the parent, ${bytes(u.from_siblings)} from siblings)`,
  }, `${modules.get(u.update_id) || shortId(u.update_id)}: ${stateText(u)}`));
  const kids = (n.children || []).map((c) => treeNode(c, false));
  return el('li', { class: `tree-node${n.stale ? ' stale' : ''}`, 'data-node': n.node_id },
    nodeId(n.node_id), top ? el('span', { class: 'muted' }, ' (this node)') : '',
    el('span', { class: 'muted', title: 'age of its last report' }, ` ${ago(n.age_secs)} ago`),
    n.stale ? el('span', { class: 'stale-note', title: n.stale }, ` stale: ${n.stale}`) : '',
    states.length ? el('ul', { class: 'states' }, states) : el('span', { class: 'muted' }, ' no updates'),
    kids.length ? el('ul', { class: 'tree' }, kids) : '');
}

function renderTree(t) {
  if (t instanceof ApiError) {
    $('tree-truncated').hidden = true;
    draw('tree', $('tree'), t.message, () => unavailable(t));
    return;
  }
  $('tree-truncated').hidden = !t.truncated;
  draw('tree', $('tree'), [t.tree, [...modules]], () => (t.tree
    ? el('ul', { class: 'tree root' }, treeNode(t.tree, true)) : el('p', { class: 'muted' }, 'No tree.')));
}

function rolloutRow(u, r) {
  const done = (r.downloaded || 0) + (r.installed || 0);
  const pct = Math.max(0, Math.min(100, Math.round(Number(r.done_percent) || 0)));
  // Through the CSSOM: the page's Content-Security-Policy forbids style attributes.
  const fill = el('div', { class: 'fill' });
  fill.style.width = `${pct}%`;
  return el('div', { class: 'rollout-row' },
    el('span', { class: 'group-name' }, r.group),
    el('div', {
      class: 'rollout-bar', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100,
      'aria-valuenow': pct, 'aria-label': `${r.group}: ${pct}% done`,
      'data-update': u.update_id, 'data-group': r.group, 'data-percent': pct,
    }, fill),
    el('span', { class: 'rollout-text' }, `${r.group}: ${done}/${r.total ?? 0} (${pct}%)`,
      r.downloading ? `, ${r.downloading} downloading` : '',
      typeof r.members === 'number' ? el('span', { class: 'muted' }, `, ${r.members} members`) : '',
      r.failed ? el('span', { class: 'bad' }, `, ${r.failed} failed`) : ''));
}

function renderUpdates(d) {
  if (d instanceof ApiError) {
    draw('updates', $('updates'), d.message, () => unavailable(d));
    return;
  }
  draw('updates', $('updates'), d.updates, (list) => {
    if (!list || list.length === 0) return el('p', { class: 'muted' }, 'No updates.');
    return list.map((u) => el('article', { class: 'update', 'data-update-id': u.update_id },
      el('h3', {}, updateLabel(u.update_id, u.module)),
      el('p', { class: 'muted' }, `${bytes(u.bytes)}, ${bytes(u.bytes_held)} held here, `,
        u.available ? 'available to this node' : 'not available to this node'),
      (u.rollout || []).length
        ? u.rollout.map((r) => rolloutRow(u, r))
        : el('p', { class: 'muted' }, 'No groups of children.')));
  });
}

function memberItem(g, id) {
  return el('li', {}, nodeId(id), g.built_in ? '' : el('button', {
    type: 'button', class: 'small', 'data-action': 'unassign', 'data-target-group': g.name, 'data-target-node': id,
    'data-testid': `unassign-${g.name}-${id}`, 'aria-label': `Take ${id} out of ${g.name}`,
  }, 'Unassign'));
}

function renderGroups(d, status) {
  const children = (status.children || []).filter((c) => !c.revoked);
  fillSelect($('assign-node'), children.map((c) =>
    [c.node_id, `${shortId(c.node_id)}${c.groups.length ? ` (${c.groups.join(', ')})` : ''}`]),
  children.length ? 'choose a child' : 'no children');
  if (d instanceof ApiError) {
    draw('groups', $('groups'), d.message, () => unavailable(d));
    return;
  }
  const custom = d.groups.filter((g) => !g.built_in).map((g) => [g.name, g.name]);
  fillSelect($('assign-group'), custom, custom.length ? 'choose a group' : 'no groups yet');
  draw('groups', $('groups'), d.groups, (groups) => el('ul', { class: 'groups' },
    groups.map((g) => el('li', { class: 'group', 'data-group-name': g.name },
      el('strong', {}, g.name),
      g.built_in ? el('span', { class: 'muted' }, ' built in, every child') : '',
      g.created ? el('span', { class: 'muted' }, ` created ${time(g.created)}`) : '',
      g.built_in ? '' : el('button', {
        type: 'button', class: 'small', 'data-action': 'delete-group', 'data-target-group': g.name,
        'data-testid': `group-delete-${g.name}`, 'aria-label': `Delete group ${g.name}`,
      }, 'Delete'),
      g.members.length
        ? el('ul', { class: 'members' }, g.members.map((m) => memberItem(g, m)))
        : el('p', { class: 'muted' }, 'No members.')))));
}

function haltText(h) {
  if (!h) return '—';
  const parts = [];
  if (h.failures !== null && h.failures !== undefined) parts.push(`${h.failures} failures`);
  if (h.fraction_percent !== null && h.fraction_percent !== undefined) parts.push(`${h.fraction_percent}% failed`);
  return parts.length ? `at ${parts.join(' or ')}` : '—';
}

function renderApprovals(d, updates, status, groups) {
  // Approvable: what is available here (from /api/updates, else from the status).
  const source = updates instanceof ApiError ? status.updates || [] : updates.updates || [];
  fillSelect($('approve-update'), source.filter((u) => u.available).map((u) =>
    [u.update_id, `${u.module || modules.get(u.update_id) || ''} ${shortId(u.update_id)}`.trim()]),
  'choose an update');
  if (!(groups instanceof ApiError)) {
    fillSelect($('approve-group'), groups.groups.map((g) => [g.name, g.name]), 'choose a group');
  }
  if (d instanceof ApiError) {
    draw('approvals', $('approvals'), d.message, () => unavailable(d));
    return;
  }
  setText('rules-info', d.rules_version === null || d.rules_version === undefined
    ? 'This node has signed no rules yet.'
    : `Rule set version ${d.rules_version}, valid until ${time(d.rules_expires)}.`);
  draw('approvals', $('approvals'), [d.approvals, [...modules]], ([list]) => {
    if (!list || list.length === 0) return el('p', { class: 'muted' }, 'No approvals.');
    const head = el('tr', {}, ['Update', 'Group', 'Wave', 'Deadline', 'Subtree', 'Halt', 'Halted',
      'Reached', ''].map((h) => el('th', { scope: 'col' }, h)));
    const rows = list.map((a) => el('tr', {
      class: a.halted ? 'halted' : '', 'data-approval': `${a.update_id}/${a.group}`,
    },
    el('td', {}, updateLabel(a.update_id, a.module)),
    el('td', {}, a.group),
    el('td', {}, `${a.wave_percent}%`,
      a.effective_wave_percent !== a.wave_percent ? ` (now ${a.effective_wave_percent}%)` : ''),
    el('td', {}, time(a.deadline)),
    el('td', {}, a.subtree ? 'yes' : 'no'),
    el('td', {}, haltText(a.halt)),
    el('td', {}, a.halted
      ? el('strong', { class: 'bad' }, `HALTED ${time(a.halted.at)}: ${a.halted.reason}`) : 'no'),
    el('td', {}, `${a.reached}/${a.members}`),
    el('td', {}, el('button', {
      type: 'button', class: 'small', 'data-action': 'decline',
      'data-target-update': a.update_id, 'data-target-group': a.group,
      'data-testid': `decline-${a.update_id}-${a.group}`,
      'aria-label': `Decline ${a.update_id} for ${a.group}`,
    }, 'Decline'))));
    return el('table', {}, el('thead', {}, head), el('tbody', {}, rows));
  });
}

function renderTokenForm(groups) {
  if (groups instanceof ApiError) return;
  fillSelect($('token-groups'), groups.groups.filter((g) => !g.built_in).map((g) => [g.name, g.name]));
}

// ---- forms and buttons -----------------------------------------------------

function optional(id) {
  const v = $(id).value.trim();
  return v === '' ? undefined : v;
}

function onSubmit(id, handler) {
  $(id).addEventListener('submit', (ev) => {
    ev.preventDefault();
    handler(ev.submitter || ev.target.querySelector('button[type=submit]'));
  });
}

function wire() {
  onSubmit('login-form', () => login($('token-input').value.trim()));
  $('logout-button').addEventListener('click', () => logout());
  $('error-dismiss').addEventListener('click', clearError);

  onSubmit('group-form', (btn) => act(btn, async () => {
    await api('POST', '/api/groups', { name: $('group-name').value.trim() });
    $('group-name').value = '';
  }));

  const membership = (method) => (btn) => act(btn, () => {
    const group = $('assign-group').value;
    const node = $('assign-node').value;
    if (!group || !node) throw new ApiError(0, 'Choose a child and a group.');
    return api(method, `/api/groups/${seg(group)}/members/${seg(node)}`);
  });
  onSubmit('assign-form', membership('PUT'));
  $('unassign-button').addEventListener('click', (ev) => membership('DELETE')(ev.currentTarget));

  onSubmit('approve-form', (btn) => act(btn, () => {
    const body = { update: $('approve-update').value, group: $('approve-group').value };
    if (!body.update || !body.group) throw new ApiError(0, 'Choose an update and a group.');
    body.subtree = $('approve-subtree').checked;
    const wave = optional('approve-wave');
    if (wave !== undefined) body.wave = wave;
    const deadline = optional('approve-deadline');
    if (deadline !== undefined) body.deadline = deadline;
    const failures = optional('approve-halt-failures');
    if (failures !== undefined) {
      if (!/^\d+$/.test(failures)) throw new ApiError(0, 'Halt failures must be a whole number.');
      body.halt_failures = Number(failures);
    }
    const fraction = optional('approve-halt-fraction');
    if (fraction !== undefined) body.halt_fraction = fraction;
    return api('POST', '/api/approvals', body);
  }));

  onSubmit('token-form', (btn) => act(btn, async () => {
    const ttl = $('token-ttl').value.trim();
    if (!/^\d+$/.test(ttl) || Number(ttl) < 1) {
      throw new ApiError(0, 'The validity must be a whole number of seconds.');
    }
    const body = {
      groups: [...$('token-groups').selectedOptions].map((o) => o.value),
      client: $('token-client').checked,
      ttl_secs: Number(ttl),
    };
    const t = await api('POST', '/api/tokens', body);
    $('token-output').value = t.token;
    setText('token-expires', `Valid until ${time(t.expires)}${t.addr ? `, joins at ${t.addr}` : ''}.`);
    $('token-result').hidden = false;
  }));
  $('token-copy').addEventListener('click', async () => {
    const out = $('token-output');
    out.select();
    try {
      await navigator.clipboard.writeText(out.value);
    } catch (e) {
      document.execCommand('copy');
    }
  });

  // Buttons inside redrawn lists: one listener for them all.
  document.addEventListener('click', (ev) => {
    const btn = ev.target.closest('button[data-action]');
    if (!btn) return;
    const { action } = btn.dataset;
    const group = btn.dataset.targetGroup;
    const node = btn.dataset.targetNode;
    const update = btn.dataset.targetUpdate;
    if (action === 'delete-group') {
      if (!window.confirm(`Delete group ${group}? Its members leave it.`)) return;
      act(btn, () => api('DELETE', `/api/groups/${seg(group)}`));
    } else if (action === 'unassign') {
      act(btn, () => api('DELETE', `/api/groups/${seg(group)}/members/${seg(node)}`));
    } else if (action === 'decline') {
      act(btn, () => api('DELETE', `/api/approvals/${seg(update)}/${seg(group)}`));
    }
  });

  document.addEventListener('visibilitychange', () => {
    if (document.hidden) clearTimeout(timer);
    else poll();
  });
}

wire();
if (token) login(token);
else showLogin();
