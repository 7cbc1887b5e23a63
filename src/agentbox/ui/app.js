// agentbox's dashboard: plain modules over the HTTP API, no framework. Every page is a view that
// draws into <main> and returns how to undo itself (timers, sockets, streams), so that leaving a
// page leaves nothing running. Text from the API is only ever set as text, never as HTML.

const KEY = "agentbox.key";
const API = "/api/v1";
const POLL_MS = 3000;
const SHOWN_BYTES = 1 << 20; // files up to this size are shown as text; bigger ones only downloaded

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

// --- the API -------------------------------------------------------------------------------

async function call(method, path, { json, body, raw = false, signal } = {}) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY) ?? ""}` };
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body, signal });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "cannot reach the agentbox server: is it still running?");
  }
  if (!response.ok) {
    const error = new ApiError(response.status, await detailOf(response));
    if (response.status === 401) signOut(error.message);
    throw error;
  }
  if (raw) return response;
  return response.status === 204 ? null : response.json();
}

async function detailOf(response) {
  try {
    const { detail } = await response.json();
    if (Array.isArray(detail)) {
      // A body field that takes a word or an object (a network: "egress" or a policy) fails both ways;
      // the word's failure ("literal[...]") says nothing to someone who sent an object.
      const told = detail.filter((e) => !String(e.loc.at(-1)).startsWith("literal["));
      return (told.length ? told : detail).map((e) => `${e.loc.slice(1).join(".")}: ${e.msg}`).join("; ");
    }
    if (detail) return String(detail);
  } catch {
    // not JSON: fall through to the status
  }
  return `the server answered ${response.status} ${response.statusText}`;
}

const ws = (id) => `${API}/workspaces/${encodeURIComponent(id)}`;

// --- small helpers ---------------------------------------------------------------------------

function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(element.dataset, value);
    else element.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

function showError(error) {
  if (error?.name === "AbortError") return;
  const box = document.getElementById("error");
  document.getElementById("error-text").textContent = error?.message ?? String(error);
  box.hidden = false;
}

function clearError() {
  document.getElementById("error").hidden = true;
}

// Runs an action from a button: the button says it is busy, an error is shown, never thrown.
async function act(button, busyText, action) {
  const text = button?.textContent;
  if (button) {
    button.disabled = true;
    button.textContent = busyText;
  }
  try {
    clearError();
    return await action();
  } catch (error) {
    showError(error);
  } finally {
    if (button) {
      button.disabled = false;
      button.textContent = text;
    }
  }
}

function confirmed(question, verb = "Confirm") {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = question;
  document.getElementById("confirm-ok").textContent = verb;
  dialog.returnValue = "";
  dialog.showModal();
  document.getElementById("confirm-ok").focus();
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
}

const UNITS = { K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };
const bytesOf = (size) => Number.parseFloat(size) * (UNITS[String(size).slice(-1)] ?? 1);

function bytes(n) {
  if (n === null || n === undefined) return "–";
  for (const [unit, size] of [["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]]) {
    if (n >= size) return `${(n / size).toFixed(n >= 10 * size ? 0 : 1)} ${unit}`;
  }
  return `${n} B`;
}

function span(seconds) {
  const s = Math.abs(seconds);
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400 * 2) return `${(s / 3600).toFixed(s < 36000 ? 1 : 0)} h`;
  return `${Math.round(s / 86400)} d`;
}

const since = (iso) => (Date.now() - Date.parse(iso)) / 1000;
const localTime = (iso) => (iso ? new Date(iso).toLocaleString() : "–");

function expiry(workspace) {
  if (!workspace.expires_at) return "never";
  const left = -since(workspace.expires_at);
  return left > 0 ? `in ${span(left)}` : "now";
}

function cpuUse(workspace) {
  const cpu = workspace.usage?.cpu;
  return cpu === null || cpu === undefined ? "–" : `${Math.round((100 * cpu) / workspace.cpu)}% of ${workspace.cpu}`;
}

function memoryUse(workspace) {
  return workspace.usage ? `${bytes(workspace.usage.memory)} / ${bytes(bytesOf(workspace.memory))}` : "–";
}

// A table with a header row of `columns`, named `label` for assistive technology; its rows go in `tbody`.
const table = (label, columns, tbody) =>
  h("table", { "aria-label": label }, h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))), tbody);

// A list of [term, value] pairs, as a definition list.
const facts = (pairs) => h("dl", { class: "facts" }, pairs.flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));

const statusBadge = (status) => h("span", { class: `status ${status}` }, status);
// A workspace's network as a line: "egress", "none", or its policy's entries ("allow pypi.org, *.github.com:443;
// deny gist.github.com"), each as a create or `agentbox ws network` takes it.
const entryText = (e) => (typeof e === "string" ? e : e.ports ? `${e.target}:${e.ports.join(",")}` : e.target);
function networkText(network) {
  if (typeof network === "string") return network;
  const parts = ["allow", "deny"].filter((k) => network[k]?.length).map((k) => `${k} ${network[k].map(entryText).join(", ")}`);
  if (network.headers?.length) parts.push(`headers for ${network.headers.map((r) => r.host).join(", ")}`);
  if (network.github?.length) parts.push(`git to ${network.github.flatMap((g) => g.repositories).join(", ")}`);
  parts.push(`otherwise ${network.default ?? "deny"}`);
  return parts.join("; ");
}

// A suspended workspace is running (any use wakes it): its badge says it waits.
const workspaceBadge = (w) =>
  w.suspended ? h("span", { class: "status suspended", title: "frozen while it waits: any use wakes it" }, "suspended") : statusBadge(w.status);

// Re-draws `container` with `draw()` only when `signature` changed, keeping keyboard focus on the
// element with the same data-key (a list that refreshes every few seconds must not steal focus).
function redraw(container, signature, draw) {
  if (container.dataset.signature === signature) return;
  container.dataset.signature = signature;
  const focused = document.activeElement?.dataset?.key;
  container.replaceChildren(...[draw()].flat());
  if (focused) container.querySelector(`[data-key="${CSS.escape(focused)}"]`)?.focus();
}

// Runs `work` now and every `ms` after it ends; the function returned stops it, and its `now()`
// runs it at once (after an action, rather than at the next tick).
function every(ms, work) {
  let stopped = false;
  let timer;
  let round = 0;
  const tick = async () => {
    clearTimeout(timer);
    const mine = ++round;
    try {
      await work();
    } catch (error) {
      showError(error);
    }
    if (!stopped && mine === round) timer = setTimeout(tick, ms);
  };
  tick();
  const stop = () => {
    stopped = true;
    clearTimeout(timer);
  };
  stop.now = tick;
  return stop;
}

// --- sign-in ------------------------------------------------------------------------------

let errorAfterRender = null;

function navigate(hash) {
  if (location.hash === hash) render();
  else location.hash = hash; // the hashchange renders
}

function signOut(reason) {
  sessionStorage.removeItem(KEY);
  errorAfterRender = reason;
  navigate("#/signin");
}

function signInView(main) {
  const key = h("input", { type: "password", id: "api-key", autocomplete: "current-password", required: true });
  const button = h("button", { type: "submit" }, "Sign in");
  const form = h(
    "form",
    { class: "card signin", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in to agentbox"),
    h("label", { for: "api-key" }, "API key", key),
    h("p", { class: "muted" }, "An agentbox API key: one of WORKSPACE_API_KEYS (make run prints it), or one an admin made. It is kept for this tab only."),
    h("div", { class: "row end" }, button),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    await act(button, "Signing in…", async () => {
      sessionStorage.setItem(KEY, key.value.trim());
      await call("GET", `${API}/workspaces`); // a 401 signs out again, saying why
      navigate("#/");
    });
  });
  main.append(form);
  key.focus();
}

// --- workspaces ------------------------------------------------------------------------------

function workspaceActions(workspace, refresh, { open = false } = {}) {
  const id = workspace.id;
  const action = (label, busy, path, question, verb, options = {}) =>
    h(
      "button",
      {
        type: "button",
        class: `small ${options.danger ? "danger" : "quiet"}`,
        dataset: { key: `${label}:${id}` },
        "aria-label": `${label} ${id}`,
        onclick: async (event) => {
          if (!(await confirmed(question, verb))) return;
          await act(event.currentTarget, busy, async () => {
            await call(options.method ?? "POST", path);
            await refresh(options.method === "DELETE");
          });
        },
      },
      label,
    );
  const buttons = [];
  if (open) buttons.push(h("a", { class: "button small quiet", href: `#/w/${id}`, dataset: { key: `open:${id}` } }, "Open"));
  if (workspace.status === "running") buttons.push(action("Stop", "Stopping…", `${ws(id)}/stop`, `Stop ${id}? Its files are kept; its processes end.`, "Stop"));
  if (workspace.status === "stopped") buttons.push(action("Start", "Starting…", `${ws(id)}/start`, `Start ${id} again?`, "Start"));
  if (workspace.ttl_days !== null && workspace.status !== "failed") {
    const days = workspace.ttl_days;
    buttons.push(action("Extend", "Extending…", `${ws(id)}/extend`, `Extend ${id} to ${span(days * 86400)} from now?`, "Extend"));
  }
  buttons.push(
    action("Delete", "Deleting…", ws(id), `Delete ${id} and every file in it? This cannot be undone.`, "Delete", {
      method: "DELETE",
      danger: true,
    }),
  );
  return h("div", { class: "row" }, buttons);
}

function createForm(onCreated) {
  const field = (label, input) => h("label", {}, label, input);
  const provider = h("select", { name: "provider" }, h("option", { value: "" }, "server default"));
  const network = h(
    "select",
    { name: "network" },
    h("option", { value: "" }, "server default"),
    h("option", { value: "egress" }, "internet (egress)"),
    h("option", { value: "none" }, "none (loopback only)"),
    h("option", { value: "allow" }, "allow list…"),
  );
  const allow = h("input", { name: "allow", placeholder: "pypi.org, 10.0.0.0/8", disabled: true });
  // A template's image, start and ready commands; its select lists the ready ones (not with an image).
  const template = h("select", { name: "template", "aria-label": "Template" }, h("option", { value: "" }, "none"));
  network.addEventListener("change", () => (allow.disabled = network.value !== "allow"));
  const inputs = {
    image: h("input", { name: "image", placeholder: "server default" }),
    cpu: h("input", { name: "cpu", type: "number", min: "0.1", step: "0.1", placeholder: "default" }),
    memory: h("input", { name: "memory", placeholder: "e.g. 1G" }),
    disk: h("input", { name: "disk", placeholder: "e.g. 10G" }),
    ttl_days: h("input", { name: "ttl_days", type: "number", min: "0.01", step: "any", placeholder: "default" }),
    labels: h("input", { name: "labels", placeholder: "team=ml, task=42" }),
    volumes: h("input", { name: "volumes", placeholder: "data:/mnt/data, cache:/mnt/c:ro" }),
  };
  const button = h("button", { type: "submit", id: "create" }, "Create workspace");
  const progress = h("p", { class: "notice", role: "status", hidden: true });
  const form = h(
    "form",
    { class: "card", "aria-label": "New workspace" },
    h("h2", {}, "New workspace"),
    h(
      "div",
      { class: "form-grid" },
      field("Provider", provider),
      field("Image", inputs.image),
      field("Template", template),
      field("CPUs", inputs.cpu),
      field("Memory", inputs.memory),
      field("Disk", inputs.disk),
      field("TTL (days)", inputs.ttl_days),
      field("Network", network),
      field("Allowed destinations", allow),
      field("Labels", inputs.labels),
      field("Volumes", inputs.volumes),
      h("div", {}, button),
    ),
    progress,
  );
  call("GET", `${API}/providers`)
    .then(({ providers }) => {
      for (const p of providers.filter((p) => p.available)) provider.append(h("option", { value: p.name }, `${p.name} (${p.runtime})`));
    })
    .catch(showError);
  call("GET", `${API}/templates`)
    .then(({ templates }) => {
      for (const t of templates.filter((t) => t.status === "ready")) template.append(h("option", { value: t.id }, `${t.name}:${t.tag}`));
    })
    .catch(showError);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {};
    if (provider.value) body.provider = provider.value;
    if (template.value) body.template = template.value;
    for (const name of ["image", "memory", "disk"]) if (inputs[name].value.trim()) body[name] = inputs[name].value.trim();
    for (const name of ["cpu", "ttl_days"]) if (inputs[name].value) body[name] = Number(inputs[name].value);
    if (network.value === "allow") body.network = { allow: allow.value.split(",").map((s) => s.trim()).filter(Boolean) };
    else if (network.value) body.network = network.value;
    const labels = inputs.labels.value.split(",").map((s) => s.trim()).filter(Boolean);
    if (labels.some((l) => !l.includes("="))) return showError(new Error("Labels: write each as key=value, separated by commas"));
    body.labels = Object.fromEntries(labels.map((l) => [l.slice(0, l.indexOf("=")).trim(), l.slice(l.indexOf("=") + 1).trim()]));
    // "name:/path" or "name:/path:ro", separated by commas; the API says what is wrong with a path.
    const mounts = inputs.volumes.value.split(",").map((s) => s.trim()).filter(Boolean);
    if (mounts.some((m) => !/^[^:]+:\/[^:]*(:ro)?$/.test(m))) return showError(new Error("Volumes: write each as name:/path or name:/path:ro, separated by commas"));
    if (mounts.length) {
      body.volumes = mounts.map((m) => {
        const [name, path, ro] = m.split(":");
        return { name, path, read_only: ro === "ro" };
      });
    }
    progress.hidden = false;
    const from = body.template ? ` from ${template.selectedOptions[0].textContent}` : "";
    progress.textContent = `Creating a workspace${from}${body.provider ? ` on ${body.provider}` : ""}: booting its sandbox…`;
    const started = performance.now();
    const created = await act(button, "Creating…", () => call("POST", `${API}/workspaces`, { json: body }));
    if (created) {
      progress.textContent = `Created ${created.id} in ${((performance.now() - started) / 1000).toFixed(1)} s.`;
      onCreated(created);
    } else {
      progress.hidden = true;
    }
  });
  return form;
}

function workspacesView(main) {
  const tbody = h("tbody");
  const empty = h("p", { class: "muted", hidden: true }, "No workspaces yet: create one above.");
  let latest = [];
  const refresh = async () => {
    latest = (await call("GET", `${API}/workspaces`)).workspaces;
    empty.hidden = latest.length > 0;
    redraw(tbody, JSON.stringify(latest), () => latest.map((w) => workspaceRow(w, refresh)));
  };
  main.append(
    h("h1", {}, "Workspaces"),
    createForm(() => refresh().catch(showError)),
    h(
      "div",
      { class: "card table-wrap" },
      table("Workspaces", ["ID", "Status", "Provider", "Runtime", "Image", "CPU", "Memory", "Age", "Expires", "Labels", "Actions"], tbody),
      empty,
    ),
  );
  return every(POLL_MS, refresh);
}

function workspaceRow(w, refresh) {
  const labels = Object.entries(w.labels).map(([k, v]) => h("span", { class: "label" }, `${k}=${v}`));
  return h(
    "tr",
    { dataset: { workspace: w.id } },
    h("td", {}, h("a", { href: `#/w/${w.id}`, dataset: { key: `link:${w.id}` } }, w.id)),
    h("td", {}, workspaceBadge(w), w.error ? h("div", { class: "muted wrap" }, w.error) : null),
    h("td", {}, w.provider),
    h("td", {}, w.runtime),
    h("td", { class: "wrap" }, w.image),
    h("td", { class: "meter" }, cpuUse(w)),
    h("td", { class: "meter" }, memoryUse(w)),
    h("td", { title: localTime(w.created_at) }, span(since(w.created_at))),
    h("td", { title: localTime(w.expires_at) }, expiry(w), w.ttl_days !== null ? h("div", { class: "muted" }, `TTL ${span(w.ttl_days * 86400)}`) : null),
    h("td", { class: "wrap" }, labels),
    h("td", {}, workspaceActions(w, () => refresh(), { open: true })),
  );
}

// --- one workspace ---------------------------------------------------------------------------

const TABS = { terminal: "Terminal", processes: "Processes", files: "Files", ports: "Ports", audit: "Audit", usage: "Usage", snapshots: "Snapshots" };

function workspaceView(main, id, tab) {
  tab = TABS[tab] ? tab : "terminal";
  const header = h("div", { class: "card" });
  const panel = h("section", { id: "panel", "aria-label": TABS[tab] });
  const tabs = h(
    "nav",
    { class: "tabs", "aria-label": "Workspace sections" },
    Object.entries(TABS).map(([name, label]) => h("a", { href: `#/w/${id}/${name}`, "aria-current": name === tab ? "page" : null }, label)),
  );
  // The network form lives outside the header, which is drawn again whenever the workspace changes.
  const editor = h("div", { id: "network-editor", hidden: true });
  main.append(h("p", {}, h("a", { href: "#/" }, "← All workspaces")), header, editor, tabs, panel);
  let byName = null; // the providers that change a workspace's network while it exists
  const editNetwork = (workspace, button) => {
    editor.hidden = !editor.hidden;
    button.setAttribute("aria-expanded", String(!editor.hidden));
    if (editor.hidden) return editor.replaceChildren();
    editor.replaceChildren(
      networkForm(workspace, () => {
        editor.hidden = true;
        editor.replaceChildren();
        stopHeader.now();
      }),
    );
    editor.querySelector("select").focus();
  };
  let undoTab = null;
  let shownFor = null; // the status the tab was drawn for: a stop or a start draws it again
  const undo = () => {
    const undoing = undoTab;
    undoTab = null;
    if (typeof undoing?.then === "function") undoing.then((done) => done?.());
    else undoing?.();
  };
  const stopHeader = every(POLL_MS, async () => {
    let workspace;
    try {
      workspace = await call("GET", ws(id));
    } catch (error) {
      if (error.status === 404) return navigate("#/");
      throw error;
    }
    byName ??= new Set((await call("GET", `${API}/providers`)).providers.filter((p) => p.capabilities?.egress_by_name).map((p) => p.name));
    const editable = workspace.network !== "none" && byName.has(workspace.provider) && ["running", "stopped"].includes(workspace.status);
    redraw(header, JSON.stringify([workspace, editable, !editor.hidden]), () =>
      workspaceHeader(workspace, (deleted) => (deleted ? navigate("#/") : stopHeader.now()), {
        editNetwork: editable ? (event) => editNetwork(workspace, event.currentTarget) : null,
        editing: !editor.hidden,
      }),
    );
    if (workspace.status !== shownFor) {
      shownFor = workspace.status;
      undo();
      panel.replaceChildren();
      undoTab = VIEWS[tab](panel, workspace);
    }
  });
  return () => {
    stopHeader();
    undo();
  };
}

function workspaceHeader(w, refresh, { editNetwork, editing }) {
  const edit =
    editNetwork &&
    h("button", { type: "button", class: "small quiet", dataset: { key: "edit-network" }, "aria-controls": "network-editor", "aria-expanded": String(editing), onclick: editNetwork }, "Edit network");
  return [
    h("div", { class: "spread" }, h("h1", {}, w.id, " ", workspaceBadge(w)), workspaceActions(w, refresh)),
    facts([
      ["Provider", `${w.provider} (${w.runtime})`],
      ["Image", w.image],
      ["Size", `${w.cpu} CPU, ${w.memory} memory, ${w.disk} disk`],
      ["In use", `CPU ${cpuUse(w)}, memory ${memoryUse(w)}`],
      ["Network", [h("span", {}, networkText(w.network)), " ", edit]],
      ["Created", `${localTime(w.created_at)} (${span(since(w.created_at))} ago)`],
      ["Expires", w.expires_at ? `${localTime(w.expires_at)} (${expiry(w)})` : "never (persistent)"],
      ["Labels", Object.entries(w.labels).map(([k, v]) => `${k}=${v}`).join(", ") || "none"],
      ...(w.volumes?.length ? [["Volumes", w.volumes.map((v) => `${v.name ?? v.volume} at ${v.path}${v.read_only ? " (read-only)" : ""}`).join(", ")]] : []),
      ...(w.error ? [["Error", w.error]] : []),
    ]),
  ];
}

// A form that changes a workspace's network: "egress", or a policy (allow and deny entries one a line, as
// networkText shows them; the default; header rules as JSON). What the API refuses is said beside it.
function networkForm(w, onChanged) {
  const policy = typeof w.network === "string" ? {} : w.network;
  const lines = (entries) => (entries ?? []).map(entryText).join("\n");
  const mode = h(
    "select",
    { name: "mode" },
    h("option", { value: "policy" }, "a policy (allow and deny by name)"),
    h("option", { value: "egress", selected: w.network === "egress" }, "egress (everything allowed, no proxy)"),
  );
  const allow = h("textarea", { name: "allow", rows: 4, class: "mono", placeholder: "pypi.org\n*.github.com:443\n10.0.0.0/8" });
  const deny = h("textarea", { name: "deny", rows: 4, class: "mono", placeholder: "gist.github.com" });
  const fallback = h("select", { name: "default" }, h("option", { value: "deny" }, "deny"), h("option", { value: "allow", selected: policy.default === "allow" }, "allow"));
  const headers = h("textarea", { name: "headers", rows: 4, class: "mono", placeholder: '[{"host": "api.example.com", "headers": {"Authorization": "Bearer ${e2b.secrets.NAME}"}}]' });
  allow.value = lines(policy.allow);
  deny.value = lines(policy.deny);
  headers.value = policy.headers?.length ? JSON.stringify(policy.headers, null, 2) : "";
  const rules = h(
    "fieldset",
    { class: "form-grid" },
    h("legend", { class: "visually-hidden" }, "Policy"),
    h("label", {}, "Allow (one a line)", allow),
    h("label", {}, "Deny (one a line)", deny),
    h("label", {}, "Default", fallback),
    h("label", {}, "Header rules (JSON, optional)", headers),
  );
  const showRules = () => (rules.disabled = rules.hidden = mode.value === "egress");
  mode.addEventListener("change", showRules);
  showRules();
  const said = h("p", { class: "error", role: "alert", hidden: true });
  const button = h("button", { type: "submit" }, "Save network");
  const form = h(
    "form",
    { class: "card network-form", "aria-label": "Edit network" },
    h("h2", {}, "Change the network"),
    h("label", {}, "Network", mode),
    rules,
    said,
    h("div", { class: "row" }, button, h("button", { type: "button", class: "quiet", onclick: () => onChanged(null) }, "Cancel")),
  );
  // "host:80,443" is the entry {"target": "host", "ports": ["80", "443"]}; anything else goes as written.
  const entryOf = (line) => {
    const [target, ports, ...more] = line.split(":");
    return ports === undefined || more.length ? line : { target, ports: ports.split(",").map((p) => p.trim()) };
  };
  const entries = (box) => box.value.split("\n").map((l) => l.trim()).filter(Boolean).map(entryOf);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    said.hidden = true;
    let network = "egress";
    if (mode.value === "policy") {
      // What the form does not edit (precedence, say) is kept as it is.
      network = { ...policy, allow: entries(allow), deny: entries(deny), default: fallback.value, headers: [] };
      if (headers.value.trim()) {
        try {
          const parsed = JSON.parse(headers.value);
          network.headers = Array.isArray(parsed) ? parsed : [parsed];
        } catch (error) {
          said.textContent = `Header rules: not JSON (${error.message})`;
          said.hidden = false;
          return;
        }
      }
    }
    button.disabled = true;
    try {
      onChanged(await call("PATCH", `${ws(w.id)}/network`, { json: { network } }));
    } catch (error) {
      said.textContent = error.message;
      said.hidden = false;
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

function notRunning(panel, w) {
  if (w.status === "running") return false;
  panel.append(h("p", { class: "notice" }, `This workspace is ${w.status}: start it to use its ${panel.getAttribute("aria-label").toLowerCase()}.`));
  return true;
}

// The terminal: a login shell started as a background process on a PTY, reached over the terminal
// WebSocket. Its PID is kept for the tab's session, so that coming back re-attaches to the same shell
// (the server replays what it printed).
async function terminalTab(panel, w) {
  if (notRunning(panel, w)) return;
  let xterm;
  try {
    xterm = await Promise.all([import("./vendor/xterm.mjs"), import("./vendor/addon-fit.mjs")]);
  } catch {
    panel.append(h("p", { class: "error" }, "The terminal's files are missing on the server: run `make ui` (it needs npm) and reload."));
    return;
  }
  const [{ Terminal }, { FitAddon }] = xterm;
  const box = h("div", { class: "terminal", id: "terminal" });
  const state = h("p", { class: "muted", role: "status" }, "Connecting…");
  panel.append(state, box);
  const term = new Terminal({ cursorBlink: true, fontSize: 14, fontFamily: '"DejaVu Sans Mono", monospace', scrollback: 5000 });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  const remembered = `agentbox.terminal.${w.id}`;
  let socket;
  const observer = new ResizeObserver(() => fit.fit());
  const undo = () => {
    observer.disconnect();
    socket?.close();
    term.dispose();
  };
  try {
    let pid = Number(sessionStorage.getItem(remembered)) || null;
    if (pid) {
      const known = await call("GET", `${ws(w.id)}/processes/${pid}`).catch(() => null);
      if (known?.status !== "running" || !known.pty) pid = null;
    }
    if (!pid) {
      const command = "if command -v bash >/dev/null; then exec bash -l; else exec sh -l; fi";
      const started = await call("POST", `${ws(w.id)}/processes`, {
        json: { command, pty: { cols: term.cols, rows: term.rows }, tag: "dashboard terminal", env: { TERM: "xterm-256color" } },
      });
      pid = started.pid;
      sessionStorage.setItem(remembered, String(pid));
    }
    const { token } = await call("POST", `${ws(w.id)}/processes/${pid}/terminal/token`);
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}${ws(w.id)}/processes/${pid}/terminal?token=${encodeURIComponent(token)}`);
    socket.binaryType = "arraybuffer";
    const encoder = new TextEncoder();
    socket.onopen = () => {
      state.textContent = `Shell (PID ${pid}) — it keeps running when you leave this page.`;
      socket.send(JSON.stringify({ cols: term.cols, rows: term.rows }));
      // Unless the user is typing into a form meanwhile (the network form, say): keys would land in the shell.
      if (!document.activeElement?.closest("form")) term.focus();
    };
    socket.onmessage = (event) => {
      if (typeof event.data !== "string") return term.write(new Uint8Array(event.data));
      const message = JSON.parse(event.data);
      if (message.error) return showError(new Error(`Terminal: ${message.error}`));
      sessionStorage.removeItem(remembered);
      const how = message.signal ? `by ${message.signal}` : `with exit code ${message.exit_code}`;
      state.textContent = `The shell ended ${how}: open this tab again for a new one.`;
    };
    socket.onclose = (event) => {
      if (event.code !== 1000 && event.code !== 1005) state.textContent = "Disconnected from the terminal: open this tab again to reconnect.";
    };
    term.onData((data) => socket.readyState === WebSocket.OPEN && socket.send(encoder.encode(data)));
    term.onResize(({ cols, rows }) => socket.readyState === WebSocket.OPEN && socket.send(JSON.stringify({ cols, rows })));
    observer.observe(box);
  } catch (error) {
    state.textContent = "No terminal.";
    showError(error);
  }
  return undo;
}

function processesTab(panel, w) {
  if (notRunning(panel, w)) return;
  const command = h("input", { name: "command", placeholder: "python3 -m http.server 8000", required: true, "aria-label": "Command" });
  const button = h("button", { type: "submit" }, "Start");
  const tbody = h("tbody");
  const output = h("pre", { class: "output", "aria-label": "Output", "aria-live": "polite", hidden: true });
  const outputTitle = h("h2", { hidden: true });
  let selected = null;
  let reading = null;
  const refresh = async () => {
    const { processes } = await call("GET", `${ws(w.id)}/processes`);
    processes.sort((a, b) => b.pid - a.pid);
    redraw(tbody, JSON.stringify([processes, selected]), () => processes.map(processRow));
  };
  const show = (process) => {
    selected = process.pid;
    reading?.abort();
    reading = new AbortController();
    outputTitle.hidden = output.hidden = false;
    outputTitle.textContent = `Output of ${process.pid}: ${process.command.join(" ")}`;
    output.textContent = "";
    follow(`${ws(w.id)}/processes/${process.pid}/output?follow=true`, output, reading.signal).catch(showError);
    refresh().catch(showError);
  };
  const processRow = (p) =>
    h(
      "tr",
      { class: p.pid === selected ? "selected" : "" },
      h("td", {}, p.pid),
      h("td", { class: "wrap" }, p.command.join(" "), p.tag ? h("div", { class: "muted" }, p.tag) : null),
      h("td", {}, statusBadge(p.status)),
      h("td", {}, p.started_at ? `${span(since(p.started_at))} ago` : "–"),
      h("td", {}, p.signal ?? p.exit_code ?? "–"),
      h(
        "td",
        {},
        h(
          "div",
          { class: "row" },
          h("button", { type: "button", class: "small quiet", dataset: { key: `output:${p.pid}` }, onclick: () => show(p) }, "Output"),
          p.status === "running"
            ? h(
                "button",
                {
                  type: "button",
                  class: "small danger",
                  dataset: { key: `kill:${p.pid}` },
                  onclick: async (event) => {
                    if (!(await confirmed(`Kill process ${p.pid} (${p.command.join(" ")})?`, "Kill"))) return;
                    await act(event.currentTarget, "Killing…", async () => {
                      await call("DELETE", `${ws(w.id)}/processes/${p.pid}`);
                      await refresh();
                    });
                  },
                },
                "Kill",
              )
            : null,
        ),
      ),
    );
  const form = h("form", { class: "card row", "aria-label": "Start a process" }, command, button);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const started = await act(button, "Starting…", () => call("POST", `${ws(w.id)}/processes`, { json: { command: command.value, cwd: "/workspace" } }));
    if (started) {
      command.value = "";
      show(started);
    }
  });
  panel.append(
    form,
    h("div", { class: "card table-wrap" }, table("Processes", ["PID", "Command", "Status", "Started", "Exit", ""], tbody)),
    outputTitle,
    output,
  );
  const stop = every(POLL_MS, refresh);
  return () => {
    stop();
    reading?.abort();
  };
}

// Appends a process's output or a template's build log (NDJSON lines) to `pre` as it comes, until it
// ends or `signal` aborts.
async function follow(path, pre, signal) {
  const response = await call("GET", path, { raw: true, signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pending += value;
      const lines = pending.split("\n");
      pending = lines.pop();
      for (const line of lines.filter(Boolean)) {
        const event = JSON.parse(line);
        if (typeof event.data === "string") pre.append(event.data);
        else if (event.dropped) pre.append(`\n[older output was dropped]\n`);
        else if (event.status) pre.append(`\n[build ${event.status}${event.error ? `: ${event.error}` : ""}]\n`);
        else if (event.error) pre.append(`\n[${event.error}]\n`);
        else if ("exit_code" in event) pre.append(`\n[ended ${event.signal ? `by ${event.signal}` : `with exit code ${event.exit_code}`}]\n`);
        pre.scrollTop = pre.scrollHeight;
      }
    }
  } catch (error) {
    if (error.name !== "AbortError") throw error;
  }
}

function filesTab(panel, w) {
  if (notRunning(panel, w)) return;
  let dir = sessionStorage.getItem(`agentbox.dir.${w.id}`) || "/workspace";
  const crumbs = h("nav", { class: "crumbs row", "aria-label": "Folder" });
  const tbody = h("tbody");
  const viewer = h("div");
  const picker = h("input", { type: "file", multiple: true, id: "upload", class: "visually-hidden" });
  const progress = h("span", { class: "muted", role: "status" });
  const join = (name) => (dir === "/" ? `/${name}` : `${dir}/${name}`);
  const open = async (path) => {
    dir = path;
    sessionStorage.setItem(`agentbox.dir.${w.id}`, dir);
    viewer.replaceChildren();
    await list();
  };
  const list = async () => {
    const listing = await call("GET", `${ws(w.id)}/files?path=${encodeURIComponent(dir)}`);
    if (listing.type !== "dir") return;
    const parts = dir.split("/").filter(Boolean);
    crumbs.replaceChildren(
      h("button", { type: "button", class: "small quiet", onclick: () => open("/").catch(showError) }, "/"),
      ...parts.map((part, i) => h("button", { type: "button", class: "small quiet", onclick: () => open(`/${parts.slice(0, i + 1).join("/")}`).catch(showError) }, `${part}/`)),
    );
    const entries = listing.entries.sort((a, b) => (b.type === "dir") - (a.type === "dir") || a.name.localeCompare(b.name));
    tbody.replaceChildren(
      ...(dir !== "/" ? [h("tr", {}, h("td", {}, h("button", { type: "button", class: "small quiet", onclick: () => open(dir.replace(/\/[^/]+$/, "") || "/").catch(showError) }, "..")), h("td", {}, "dir"), h("td"), h("td"), h("td"))] : []),
      ...entries.map((e) =>
        h(
          "tr",
          {},
          h(
            "td",
            { class: "wrap" },
            h("button", { type: "button", class: "small quiet", dataset: { key: `entry:${e.name}` }, onclick: () => (e.type === "dir" ? open(join(e.name)) : view(join(e.name), e)).catch(showError) }, e.type === "dir" ? `${e.name}/` : e.name),
          ),
          h("td", {}, e.type),
          h("td", { class: "meter" }, e.type === "dir" ? "" : bytes(e.size)),
          h("td", {}, e.mode),
          h("td", {}, new Date(e.mtime * 1000).toLocaleString()),
        ),
      ),
    );
    if (!entries.length) tbody.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "Empty folder: drop files here to upload them.")));
  };
  // Small files are fetched to be shown; a big one only when it is downloaded.
  const view = async (path, entry) => {
    const name = path.split("/").pop();
    const fetchBlob = async () => (await call("GET", `${ws(w.id)}/files?path=${encodeURIComponent(path)}`, { raw: true })).blob();
    const blob = entry.size <= SHOWN_BYTES ? await fetchBlob() : null;
    const download = h("button", { type: "button", class: "small", onclick: (event) => act(event.currentTarget, "Downloading…", async () => save(blob ?? (await fetchBlob()), name)) }, "Download");
    const text = blob ? await blob.text() : null;
    let body;
    if (text !== null && !text.includes("\u0000") && !text.includes("\uFFFD")) body = h("pre", { class: "file", "aria-label": `Contents of ${path}` }, text);
    else body = h("p", { class: "muted" }, blob ? "A binary file: download it to look inside." : "Too big to show here: download it.");
    viewer.replaceChildren(h("div", { class: "card" }, h("div", { class: "spread" }, h("h2", {}, path), h("div", { class: "row" }, h("span", { class: "muted" }, `${bytes(entry.size)}, mode ${entry.mode}`), download)), body));
  };
  const upload = async (files) => {
    const all = [...files];
    try {
      for (const [i, file] of all.entries()) {
        progress.textContent = `Uploading ${file.name} (${i + 1} of ${all.length}, ${bytes(file.size)})…`;
        await call("PUT", `${ws(w.id)}/files?path=${encodeURIComponent(join(file.name))}`, { body: file });
      }
      progress.textContent = `Uploaded ${all.length} file${all.length === 1 ? "" : "s"} to ${dir}.`;
    } catch (error) {
      progress.textContent = "";
      showError(error);
    }
    await list().catch(showError);
  };
  picker.addEventListener("change", () => upload(picker.files).then(() => (picker.value = "")));
  const drop = h(
    "div",
    { class: "card drop table-wrap", id: "drop" },
    h("div", { class: "spread" }, crumbs, h("div", { class: "row" }, progress, h("label", { class: "button small", for: "upload", tabindex: "0", onkeydown: (e) => (e.key === "Enter" || e.key === " ") && picker.click() }, "Upload files…"), picker)),
    h("p", { class: "muted" }, "Drop files anywhere on this box to upload them to this folder."),
    table("Files", ["Name", "Type", "Size", "Mode", "Modified"], tbody),
  );
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) upload(event.dataTransfer.files);
  });
  panel.append(drop, viewer);
  list().catch(async (error) => {
    if (error.status === 404 && dir !== "/workspace") return open("/workspace").catch(showError);
    showError(error);
  });
}

function save(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

function portsTab(panel, w) {
  if (notRunning(panel, w)) return;
  const tbody = h("tbody");
  const urls = new Map(); // port -> preview URL (minted once per visit: each lasts an hour)
  const urlOf = async (port) => {
    if (!urls.has(port)) urls.set(port, (await call("GET", `${ws(w.id)}/ports/${port}/url`)).url);
    return urls.get(port);
  };
  const refresh = async () => {
    const { ports } = await call("GET", `${ws(w.id)}/ports`);
    const links = await Promise.all(ports.map(urlOf));
    redraw(tbody, JSON.stringify(ports), () =>
      ports.length
        ? ports.map((port, i) =>
            h("tr", {}, h("td", {}, port), h("td", {}, h("a", { href: links[i], target: "_blank", rel: "noopener", class: "button small", dataset: { key: `preview:${port}` } }, `Open preview of port ${port}`))),
          )
        : [h("tr", {}, h("td", { colspan: 2, class: "muted" }, "Nothing listens yet. Start a server in the terminal or as a process, e.g. python3 -m http.server 8000."))],
    );
  };
  const port = h("input", { type: "number", min: "1", max: "65535", placeholder: "8000", "aria-label": "Port", required: true });
  const button = h("button", { type: "submit" }, "Open preview");
  const form = h("form", { class: "card row", "aria-label": "Open a port" }, h("span", {}, "Another port:"), port, button);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const url = await act(button, "Opening…", () => urlOf(Number(port.value)));
    if (url) window.open(url, "_blank", "noopener");
  });
  panel.append(
    h("div", { class: "card table-wrap" }, table("Listening ports", ["Port", "Preview"], tbody)),
    form,
    h("p", { class: "muted" }, "A preview URL opens the port without an API key for an hour: share it with care."),
  );
  return every(POLL_MS, refresh);
}

function auditTab(panel, w) {
  const tbody = h("tbody");
  const more = h("button", { type: "button", class: "quiet", hidden: true }, "Older records");
  let before = null;
  const load = async (append) => {
    const page = await call("GET", `${ws(w.id)}/audit?limit=50${append && before ? `&before=${before}` : ""}`);
    before = page.next_before;
    more.hidden = before === null;
    const rows = page.records.map((r) =>
      h(
        "tr",
        {},
        h("td", { title: r.at }, localTime(r.at)),
        h("td", {}, r.owner ?? "–"),
        h("td", {}, r.action),
        h("td", { class: "wrap" }, Object.keys(r.arguments).length ? JSON.stringify(r.arguments) : ""),
        h("td", {}, r.status),
        h("td", { class: "meter" }, `${r.duration_ms} ms`),
      ),
    );
    if (append) tbody.append(...rows);
    else tbody.replaceChildren(...rows);
    if (!tbody.children.length) tbody.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No calls on this workspace yet.")));
  };
  more.addEventListener("click", () => act(more, "Loading…", () => load(true)));
  const reload = h("button", { type: "button", class: "quiet", onclick: (e) => act(e.currentTarget, "Loading…", () => load(false)) }, "Reload");
  panel.append(
    h("div", { class: "spread" }, h("p", { class: "muted" }, "Every call made on this workspace, newest first."), reload),
    h("div", { class: "card table-wrap" }, table("Audit trail", ["When", "Who", "Action", "Arguments", "Status", "Took"], tbody)),
    more,
  );
  load(false).catch(showError);
}

function usageTab(panel, w) {
  const charts = h("div", { class: "charts" });
  const note = h("p", { class: "muted", role: "status" });
  panel.append(note, charts);
  const limit = bytesOf(w.memory);
  return every(5000, async () => {
    const { interval, samples } = await call("GET", `${ws(w.id)}/usage`);
    note.textContent = samples.length
      ? `The last hour, measured every ${interval} s while it runs (kept by this server since it started).`
      : `No measurements yet: they come every ${interval} s while the workspace runs${w.provider === "e2b" ? " (the e2b provider reports none)" : ""}.`;
    redraw(charts, JSON.stringify(samples), () => [
      chart("CPU", samples, (s) => s.cpu, w.cpu, (v) => `${Math.round((100 * v) / w.cpu)}% of ${w.cpu} CPU`, `${w.cpu} CPU`),
      chart("Memory", samples, (s) => s.memory, limit, (v) => `${bytes(v)} of ${bytes(limit)}`, bytes(limit)),
    ]);
  });
}

// A line chart of the last hour as SVG: time across, 0..max up.
function chart(title, samples, value, max, format, maxLabel) {
  const width = 600;
  const height = 180;
  const left = 8;
  const top = 24;
  const plotHeight = height - top - 20;
  const now = Date.now();
  const points = samples
    .filter((s) => value(s) !== null)
    .map((s) => [left + ((Date.parse(s.at) - (now - 3600e3)) / 3600e3) * (width - 2 * left), top + plotHeight * (1 - Math.min(1, value(s) / max))]);
  const last = samples.filter((s) => value(s) !== null).at(-1);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${title} over the last hour${last ? `, now ${format(value(last))}` : ", no data yet"}`);
  const add = (tag, attributes, text) => {
    const element = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attributes)) element.setAttribute(k, v);
    if (text) element.textContent = text;
    svg.append(element);
  };
  add("line", { class: "axis", x1: left, x2: width - left, y1: top, y2: top });
  add("line", { class: "axis", x1: left, x2: width - left, y1: top + plotHeight, y2: top + plotHeight });
  add("text", { x: left, y: 14 }, `${title}: ${last ? format(value(last)) : "no data yet"}`);
  add("text", { x: left, y: height - 4 }, "1 hour ago");
  add("text", { x: width - left, y: height - 4, "text-anchor": "end" }, "now");
  add("text", { x: width - left, y: top - 4, "text-anchor": "end" }, maxLabel);
  if (points.length) {
    const line = points.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
    add("polygon", { class: "area", points: `${points[0][0]},${top + plotHeight} ${line} ${points.at(-1)[0]},${top + plotHeight}` });
    add("polyline", { class: "line", points: line });
    const [x, y] = points.at(-1);
    add("circle", { class: "line", cx: x.toFixed(1), cy: y.toFixed(1), r: 3 });
  }
  return h("figure", { class: "card chart" }, svg);
}

const VIEWS = { terminal: terminalTab, processes: processesTab, files: filesTab, ports: portsTab, audit: auditTab, usage: usageTab, snapshots: snapshotsTab };

// --- snapshots, forks, volumes, templates ------------------------------------------------------

const snap = (ref) => `${API}/snapshots/${encodeURIComponent(ref)}`;
// The API's note starts "files only: ..." and says why.
const memoryKept = (s) => (s.memory_kept ? "memory and processes kept" : (s.memory_note ?? "files only"));
const workspaceLink = (id) => h("a", { href: `#/w/${id}`, dataset: { key: `link:${id}` } }, id);

// A notice that says what an action made, with a link to it (and stays until the next action).
function madeNotice() {
  return h("div", { class: "notice", role: "status", hidden: true });
}

function said(box, ...children) {
  box.replaceChildren(...children);
  box.hidden = false;
}

// A snapshot as a row: "New workspace from it" says what it made in `made`; Delete asks first.
function snapshotRow(s, made, refresh, { workspaceColumn = true } = {}) {
  const fromIt = h(
    "button",
    {
      type: "button",
      class: "small",
      dataset: { key: `from:${s.id}` },
      "aria-label": `New workspace from ${s.name ?? s.id}`,
      onclick: (event) =>
        act(event.currentTarget, "Creating…", async () => {
          const created = await call("POST", `${API}/workspaces`, { json: { snapshot: s.id } });
          said(made, `Created `, workspaceLink(created.id), ` from ${s.name ?? s.id}.`);
        }),
    },
    "New workspace from it",
  );
  const remove = h(
    "button",
    {
      type: "button",
      class: "small danger",
      dataset: { key: `delete:${s.id}` },
      "aria-label": `Delete ${s.name ?? s.id}`,
      onclick: async (event) => {
        const button = event.currentTarget; // null once the dialog has been awaited
        if (!(await confirmed(`Delete the snapshot ${s.name ?? s.id}? Workspaces made from it are not touched.`, "Delete"))) return;
        await act(button, "Deleting…", async () => {
          await call("DELETE", snap(s.id));
          await refresh();
        });
      },
    },
    "Delete",
  );
  return h(
    "tr",
    { dataset: { snapshot: s.id } },
    h("td", { class: "mono" }, s.id),
    h("td", {}, s.name ?? "–"),
    workspaceColumn ? h("td", {}, workspaceLink(s.workspace_id)) : null,
    h("td", { class: "wrap", title: s.memory_note ?? "" }, s.memory_kept ? "kept" : "files only"),
    h("td", { class: "meter" }, bytes(s.size)),
    h("td", {}, `${s.cpu} CPU, ${bytes(s.memory)}, ${bytes(s.disk)} disk`),
    h("td", { title: localTime(s.created_at) }, `${span(since(s.created_at))} ago`),
    h("td", {}, h("div", { class: "row" }, fromIt, remove)),
  );
}

// A workspace's snapshots tab: take one, fork the workspace, its snapshots (running or stopped both work).
function snapshotsTab(panel, w) {
  const tbody = h("tbody");
  const made = madeNotice();
  const refresh = async () => {
    const { snapshots } = await call("GET", `${API}/snapshots?workspace_id=${encodeURIComponent(w.id)}`);
    redraw(tbody, JSON.stringify(snapshots), () =>
      snapshots.length
        ? snapshots.map((s) => snapshotRow(s, made, () => stop.now(), { workspaceColumn: false }))
        : [h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No snapshots of this workspace yet."))],
    );
  };

  const name = h("input", { name: "snapshot-name", placeholder: "optional, e.g. before-upgrade", "aria-label": "Snapshot name" });
  const takeButton = h("button", { type: "submit" }, "Snapshot");
  const taken = madeNotice();
  const take = h(
    "form",
    { class: "card", "aria-label": "Take a snapshot" },
    h("h2", {}, "Take a snapshot"),
    h("p", { class: "muted" }, "Its files, and its memory and processes when gVisor can checkpoint it (a workspace without network). The workspace goes on."),
    h("div", { class: "row" }, name, takeButton),
    taken,
  );
  take.addEventListener("submit", async (event) => {
    event.preventDefault();
    const json = name.value.trim() ? { name: name.value.trim() } : {};
    const s = await act(takeButton, "Snapshotting…", () => call("POST", `${ws(w.id)}/snapshots`, { json }));
    if (!s) return;
    name.value = "";
    said(taken, `Took ${s.name ? `${s.name} (${s.id})` : s.id}, ${bytes(s.size)}: ${memoryKept(s)}.`);
    stop.now();
  });

  const count = h("input", { name: "count", type: "number", min: "1", max: "100", value: "1", required: true, "aria-label": "Copies" });
  const forkButton = h("button", { type: "submit" }, "Fork");
  const forked = h("div", { role: "status" });
  const fork = h(
    "form",
    { class: "card", "aria-label": "Fork" },
    h("h2", {}, "Fork"),
    h("p", { class: "muted" }, "New workspaces from a snapshot of this one, side by side (1 to 100); this one goes on."),
    h("div", { class: "row" }, count, forkButton),
    forked,
  );
  fork.addEventListener("submit", async (event) => {
    event.preventDefault();
    forked.replaceChildren();
    const answer = await act(forkButton, "Forking…", () => call("POST", `${ws(w.id)}/fork`, { json: { count: Number(count.value) } }));
    if (!answer) return;
    forked.replaceChildren(
      h("p", { class: "notice" }, `Made ${answer.made} of ${answer.workspaces.length}; ${memoryKept(answer.snapshot)}.`),
      h(
        "ul",
        { "aria-label": "Forked workspaces" },
        answer.workspaces.map((m) => h("li", {}, m.id ? workspaceLink(m.id) : h("span", { class: "error-text" }, `not made (${m.status_code}): ${m.error}`))),
      ),
    );
  });

  panel.append(
    h("div", { class: "charts" }, take, fork),
    made,
    h("div", { class: "card table-wrap" }, table("Snapshots of this workspace", ["ID", "Name", "Memory", "Size", "Made with", "Taken", "Actions"], tbody)),
  );
  const stop = every(POLL_MS * 2, refresh);
  return stop;
}

// Every snapshot of the owner's, newest first, a page at a time; or the one of a name.
function snapshotsView(main) {
  const tbody = h("tbody");
  const made = madeNotice();
  const more = h("button", { type: "button", class: "quiet", hidden: true }, "Older snapshots");
  const name = h("input", { type: "search", name: "name", placeholder: "a snapshot's name", "aria-label": "Find by name" });
  const find = h("form", { class: "card row", "aria-label": "Find a snapshot" }, name, h("button", { type: "submit" }, "Find"));
  let before = null;
  const load = async (append) => {
    const query = new URLSearchParams({ limit: "50" });
    if (name.value.trim()) query.set("name", name.value.trim());
    if (append && before) query.set("before", before);
    const page = await call("GET", `${API}/snapshots?${query}`);
    before = page.next_before;
    more.hidden = before === null;
    const rows = page.snapshots.map((s) => snapshotRow(s, made, () => load(false)));
    if (append) tbody.append(...rows);
    else tbody.replaceChildren(...rows);
    if (!tbody.children.length) {
      const none = name.value.trim() ? "No snapshot of that name." : "No snapshots yet: take one from a workspace's Snapshots tab.";
      tbody.append(h("tr", {}, h("td", { colspan: 8, class: "muted" }, none)));
    }
  };
  find.addEventListener("submit", (event) => {
    event.preventDefault();
    act(find.querySelector("button"), "Finding…", () => load(false));
  });
  more.addEventListener("click", () => act(more, "Loading…", () => load(true)));
  main.append(
    h("h1", {}, "Snapshots"),
    find,
    made,
    h("div", { class: "card table-wrap" }, table("Snapshots", ["ID", "Name", "Workspace", "Memory", "Size", "Made with", "Taken", "Actions"], tbody)),
    more,
  );
  load(false).catch(showError);
}

// The owner's volumes: made with a name and size, deleted once no workspace mounts them. What the API
// refuses (a name taken, a volume in use) is said beside the form.
function volumesView(main) {
  const tbody = h("tbody");
  const name = h("input", { name: "name", required: true, placeholder: "e.g. datasets" });
  const size = h("input", { name: "size", required: true, placeholder: "e.g. 1G" });
  const button = h("button", { type: "submit" }, "Create volume");
  const refused = h("p", { class: "error", role: "alert", hidden: true });
  const form = h(
    "form",
    { class: "card", "aria-label": "New volume" },
    h("h2", {}, "New volume"),
    h("div", { class: "form-grid" }, h("label", {}, "Name", name), h("label", {}, "Size", size), h("div", {}, button)),
    refused,
    h("p", { class: "muted" }, "A filesystem of its own that outlives workspaces; a workspace mounts it at its create (the Volumes field of the workspaces' form, or the API)."),
  );
  // Runs `work`; a refusal is said beside the form rather than in the page's error bar.
  const attempt = async (control, busy, work) => {
    const text = control.textContent;
    control.disabled = true;
    control.textContent = busy;
    refused.hidden = true;
    try {
      return (await work()) ?? true;
    } catch (error) {
      if (error.name !== "AbortError") said(refused, error.message);
      return null;
    } finally {
      control.disabled = false;
      control.textContent = text;
    }
  };
  const refresh = async () => {
    const { volumes } = await call("GET", `${API}/volumes`);
    redraw(tbody, JSON.stringify(volumes), () =>
      volumes.length
        ? volumes.map((v) =>
            h(
              "tr",
              { dataset: { volume: v.name } },
              h("td", {}, v.name),
              h("td", { class: "mono" }, v.id),
              h("td", { class: "meter" }, v.size),
              h("td", { class: "meter" }, v.used === null ? "–" : bytes(v.used)),
              h("td", { class: "wrap" }, v.used_by.length ? v.used_by.flatMap((id, i) => [i ? ", " : "", workspaceLink(id)]) : "none"),
              h("td", { title: localTime(v.created_at) }, `${span(since(v.created_at))} ago`),
              h(
                "td",
                {},
                h(
                  "button",
                  {
                    type: "button",
                    class: "small danger",
                    dataset: { key: `delete:${v.id}` },
                    "aria-label": `Delete ${v.name}`,
                    onclick: async (event) => {
                      const button = event.currentTarget; // null once the dialog has been awaited
                      if (!(await confirmed(`Delete the volume ${v.name} and everything on it? This cannot be undone.`, "Delete"))) return;
                      if (await attempt(button, "Deleting…", () => call("DELETE", `${API}/volumes/${encodeURIComponent(v.id)}`))) stop.now();
                    },
                  },
                  "Delete",
                ),
              ),
            ),
          )
        : [h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No volumes yet: create one above."))],
    );
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const made = await attempt(button, "Creating…", () => call("POST", `${API}/volumes`, { json: { name: name.value.trim(), size: size.value.trim() } }));
    if (!made) return;
    form.reset();
    stop.now();
  });
  main.append(h("h1", {}, "Volumes"), form, h("div", { class: "card table-wrap" }, table("Volumes", ["Name", "ID", "Size", "Used", "Mounted by", "Created", "Actions"], tbody)));
  const stop = every(POLL_MS, refresh);
  return stop;
}

// The owner's templates: built from a Dockerfile (its log followed as it builds), listed with their
// status, deleted. A workspace is made from a ready one in the workspaces' create form.
function templatesView(main) {
  const tbody = h("tbody");
  const field = (label, input) => h("label", {}, label, input);
  const inputs = {
    name: h("input", { name: "name", required: true, placeholder: "e.g. python-app" }),
    tag: h("input", { name: "tag", placeholder: "latest" }),
    start_cmd: h("input", { name: "start_cmd", placeholder: "optional: a server to start" }),
    ready_cmd: h("input", { name: "ready_cmd", placeholder: "optional: passes once ready" }),
  };
  const dockerfile = h("textarea", { name: "dockerfile", rows: 6, class: "mono", required: true, placeholder: "FROM agentbox/workspace:bookworm\nRUN pip install --no-index ..." });
  const button = h("button", { type: "submit" }, "Build");
  const form = h(
    "form",
    { class: "card template-form", "aria-label": "New template" },
    h("h2", {}, "New template"),
    h("label", {}, "Dockerfile", dockerfile),
    h("div", { class: "form-grid" }, field("Name", inputs.name), field("Tag", inputs.tag), field("Start command", inputs.start_cmd), field("Ready command", inputs.ready_cmd), h("div", {}, button)),
    h("p", { class: "muted" }, "FROM an image on this server (builds never pull); RUN steps have no network."),
  );
  const logTitle = h("h2", { hidden: true });
  const log = h("pre", { class: "output", "aria-label": "Build log", "aria-live": "polite", hidden: true });
  let reading = null;
  const showLog = (t) => {
    reading?.abort();
    reading = new AbortController();
    logTitle.hidden = log.hidden = false;
    logTitle.textContent = `Build log of ${t.name}:${t.tag}`;
    log.textContent = "";
    follow(`${API}/templates/${encodeURIComponent(t.id)}/build-log?follow=true`, log, reading.signal)
      .then(() => stop.now())
      .catch(showError);
  };
  const row = (t) =>
    h(
      "tr",
      { dataset: { template: `${t.name}:${t.tag}` } },
      h("td", {}, `${t.name}:${t.tag}`),
      h("td", { class: "mono" }, t.id),
      h("td", { class: "wrap" }, statusBadge(t.status), t.error ? h("div", { class: "muted" }, t.error) : null),
      h("td", { class: "wrap" }, t.image),
      h("td", { class: "wrap" }, [t.start_cmd && `start: ${t.start_cmd}`, t.ready_cmd && `ready: ${t.ready_cmd}`].filter(Boolean).join("; ") || "–"),
      h("td", {}, t.pool_size ? `${t.pool_ready} of ${t.pool_size}` : "–"),
      h("td", { title: localTime(t.built_at ?? t.created_at) }, t.built_at ? `${span(since(t.built_at))} ago` : "–"),
      h(
        "td",
        {},
        h(
          "div",
          { class: "row" },
          h("button", { type: "button", class: "small quiet", dataset: { key: `log:${t.id}` }, "aria-label": `Build log of ${t.name}:${t.tag}`, onclick: () => showLog(t) }, "Log"),
          h(
            "button",
            {
              type: "button",
              class: "small danger",
              dataset: { key: `delete:${t.id}` },
              "aria-label": `Delete ${t.name}:${t.tag}`,
              onclick: async (event) => {
                const button = event.currentTarget; // null once the dialog has been awaited
                if (!(await confirmed(`Delete the template ${t.name}:${t.tag} and its image?`, "Delete"))) return;
                await act(button, "Deleting…", async () => {
                  await call("DELETE", `${API}/templates/${encodeURIComponent(t.id)}`);
                  await stop.now();
                });
              },
            },
            "Delete",
          ),
        ),
      ),
    );
  const refresh = async () => {
    const { templates } = await call("GET", `${API}/templates`);
    redraw(tbody, JSON.stringify(templates), () =>
      templates.length ? templates.map(row) : [h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No templates yet: build one above."))],
    );
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { name: inputs.name.value.trim(), dockerfile: dockerfile.value };
    for (const name of ["tag", "start_cmd", "ready_cmd"]) if (inputs[name].value.trim()) body[name] = inputs[name].value.trim();
    const started = await act(button, "Starting…", () => call("POST", `${API}/templates`, { json: body }));
    if (!started) return;
    form.reset();
    showLog(started);
    stop.now();
  });
  main.append(
    h("h1", {}, "Templates"),
    form,
    h("div", { class: "card table-wrap" }, table("Templates", ["Name", "ID", "Status", "Image", "Commands", "Pool", "Built", "Actions"], tbody)),
    logTitle,
    log,
  );
  const stop = every(POLL_MS, refresh);
  return () => {
    stop();
    reading?.abort();
  };
}

// --- the server ------------------------------------------------------------------------------

function serverView(main) {
  const health = h("div", { class: "card" });
  const capacity = h("div", { class: "card" });
  const providers = h("tbody");
  const metrics = h("pre", { class: "output", hidden: true, "aria-label": "Metrics" });
  main.append(
    h("h1", {}, "Server"),
    h("div", { class: "charts" }, health, capacity),
    h("h2", {}, "Providers"),
    h("div", { class: "card table-wrap" }, table("Providers", ["Name", "Available", "Runtime", "Platform", "Active", "Network policies", "Note"], providers)),
    h(
      "div",
      { class: "card row" },
      h("a", { href: "/docs", target: "_blank", rel: "noopener" }, "API reference (/docs)"),
      h("a", { href: "/metrics" }, "Prometheus metrics (/metrics, needs the key)"),
      h(
        "button",
        {
          type: "button",
          class: "small quiet",
          onclick: (event) =>
            act(event.currentTarget, "Loading…", async () => {
              metrics.textContent = await (await call("GET", "/metrics", { raw: true })).text();
              metrics.hidden = false;
            }),
        },
        "Show the metrics here",
      ),
    ),
    metrics,
  );
  const titled = (title, pairs) => [h("h2", {}, title), facts(pairs)];
  return every(5000, async () => {
    const [state, { providers: list }, room] = await Promise.all([call("GET", `${API}/health`), call("GET", `${API}/providers`), call("GET", `${API}/capacity`)]);
    redraw(health, JSON.stringify(state), () =>
      titled("Health", [
        ["Status", state.status],
        ["Version", state.version],
        ["Runtime", state.runtime ?? "none"],
        ["gVisor", state.gvisor ? `yes, platform ${state.gvisor_platform}${state.runsc_version ? `, runsc ${state.runsc_version}` : ""}` : "no"],
        ["Why", state.runtime_reason],
        ["Providers", state.providers.join(", ") || "none"],
        ["E2B endpoint", state.e2b_api_url ?? "off"],
      ]),
    );
    redraw(capacity, JSON.stringify(room), () =>
      titled("Capacity", [
        ["Active workspaces", `${room.active} of ${room.max_concurrent} (WORKSPACE_MAX_CONCURRENT)`],
        ["Warm pool", room.warm_pool_size ? `${room.warm_pool_ready} of ${room.warm_pool_size} ready` : "off (WORKSPACE_WARM_POOL_SIZE=0)"],
      ]),
    );
    redraw(providers, JSON.stringify(list), () =>
      list.map((p) =>
        h(
          "tr",
          {},
          h("td", {}, p.name),
          h("td", {}, p.available ? "yes" : "no"),
          h("td", {}, p.runtime ?? "–"),
          h("td", {}, p.platform ?? "–"),
          h("td", {}, p.active),
          h("td", {}, p.capabilities?.network_policies.join(", ") ?? "–"),
          h("td", { class: "wrap" }, p.reason ?? ""),
        ),
      ),
    );
  });
}

// --- API keys ------------------------------------------------------------------------------

function keysView(main) {
  const tbody = h("tbody");
  const mine = h("div", { class: "card" });
  const shown = h("div", { class: "card notice", role: "status", hidden: true });
  const form = h("div");
  main.append(h("h1", {}, "API keys"), mine, shown, form, h("div", { class: "card table-wrap" }, table("API keys", ["ID", "Owner", "Name", "Admin", "Quota", "Last used", "Actions"], tbody)));
  let me = null;
  const refresh = async () => {
    me ??= await call("GET", `${API}/keys/me`);
    if (!mine.childElementCount) {
      mine.append(h("h2", {}, "Your key"), facts([["Owner", me.owner], ["Name", me.name], ["Admin", me.admin ? "yes: you make and revoke everyone's keys" : "no"], ["Quota", quotaOf(me)]]));
      if (me.admin) form.replaceWith(keyForm(shown, () => refresh().catch(showError)));
    }
    const { keys } = await call("GET", `${API}/keys`);
    redraw(tbody, JSON.stringify(keys), () => keys.map((key) => keyRow(key, me, refresh)));
  };
  return every(POLL_MS * 2, refresh);
}

const quotaOf = (key) =>
  [["workspaces", key.max_workspaces], ["CPUs", key.max_cpus], ["memory", key.max_memory]]
    .filter(([, value]) => value !== null)
    .map(([label, value]) => `${value} ${label}`)
    .join(", ") || "none";

function keyRow(key, me, refresh) {
  const revoke = h(
    "button",
    {
      type: "button",
      class: "small danger",
      dataset: { key: `revoke:${key.id}` },
      "aria-label": `Revoke ${key.id}`,
      onclick: async (event) => {
        const own = key.id === me.id ? " This is the key you are signed in with." : "";
        if (!(await confirmed(`Revoke ${key.id} (${key.name}, ${key.owner})? Everything made with it stops working within a second.${own}`, "Revoke"))) return;
        await act(event.currentTarget, "Revoking…", async () => {
          await call("DELETE", `${API}/keys/${encodeURIComponent(key.id)}`);
          await refresh();
        });
      },
    },
    "Revoke",
  );
  return h(
    "tr",
    {},
    h("td", { class: "mono" }, key.id),
    h("td", {}, key.owner),
    h("td", {}, key.name),
    h("td", {}, key.admin ? "yes" : ""),
    h("td", {}, quotaOf(key)),
    h("td", {}, key.last_used_at ? `${span(since(key.last_used_at))} ago` : "never"),
    h("td", {}, revoke),
  );
}

function keyForm(shown, onCreated) {
  const field = (label, input) => h("label", {}, label, input);
  const inputs = {
    owner: h("input", { name: "owner", required: true, placeholder: "e.g. alice" }),
    name: h("input", { name: "name", required: true, placeholder: "e.g. ci" }),
    max_workspaces: h("input", { name: "max_workspaces", type: "number", min: "1", placeholder: "no limit" }),
    max_cpus: h("input", { name: "max_cpus", type: "number", min: "0.1", step: "0.1", placeholder: "no limit" }),
    max_memory: h("input", { name: "max_memory", placeholder: "e.g. 16G" }),
  };
  const admin = h("input", { name: "admin", type: "checkbox" });
  const button = h("button", { type: "submit" }, "Make key");
  const form = h(
    "form",
    { class: "card", "aria-label": "New API key" },
    h("h2", {}, "New API key"),
    h(
      "div",
      { class: "form-grid" },
      field("Owner", inputs.owner),
      field("Name", inputs.name),
      field("Max workspaces", inputs.max_workspaces),
      field("Max CPUs", inputs.max_cpus),
      field("Max memory", inputs.max_memory),
      h("label", { class: "row" }, admin, "Admin"),
      h("div", {}, button),
    ),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { owner: inputs.owner.value.trim(), name: inputs.name.value.trim(), admin: admin.checked };
    for (const name of ["max_workspaces", "max_cpus"]) if (inputs[name].value) body[name] = Number(inputs[name].value);
    if (inputs.max_memory.value.trim()) body.max_memory = inputs.max_memory.value.trim();
    const made = await act(button, "Making…", () => call("POST", `${API}/keys`, { json: body }));
    if (!made) return;
    const secret = h("input", { readonly: true, value: made.secret, "aria-label": "The new key", class: "mono", size: 60 });
    shown.replaceChildren(
      h("p", {}, `Made ${made.id} for ${made.owner}. Copy its secret now: it is shown this once.`),
      secret,
    );
    shown.hidden = false;
    secret.select();
    form.reset();
    onCreated();
  });
  return form;
}

// --- routing ---------------------------------------------------------------------------------

let undoView = null;
const SECTIONS = {
  snapshots: ["Snapshots", snapshotsView],
  volumes: ["Volumes", volumesView],
  templates: ["Templates", templatesView],
  keys: ["API keys", keysView],
  server: ["Server", serverView],
};

function render() {
  undoView?.();
  undoView = null;
  clearError();
  if (errorAfterRender) showError(new Error(errorAfterRender));
  errorAfterRender = null;
  const main = document.getElementById("main");
  main.replaceChildren();
  const signedIn = Boolean(sessionStorage.getItem(KEY));
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("sign-out").hidden = !signedIn;
  const [, section = "", id, tab] = location.hash.split("/");
  for (const link of document.querySelectorAll("#nav a")) {
    const current = link.dataset.section === (SECTIONS[section] ? section : "workspaces");
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (!signedIn) {
    document.title = "Sign in · agentbox";
    return signInView(main);
  }
  if (SECTIONS[section]) {
    const [title, view] = SECTIONS[section];
    document.title = `${title} · agentbox`;
    undoView = view(main);
  } else if (section === "w" && id) {
    document.title = `${id} · agentbox`;
    undoView = workspaceView(main, decodeURIComponent(id), tab);
  } else {
    document.title = "Workspaces · agentbox";
    undoView = workspacesView(main);
  }
}

document.getElementById("sign-out").addEventListener("click", () => signOut());
document.getElementById("error-close").addEventListener("click", clearError);
window.addEventListener("hashchange", render);
render();
