// The callbox console: plain modern JavaScript, no build step, no inline script.
const API = "/console/api";
const TERMINAL = new Set(["finished", "no_input", "error"]);
const $ = (selector) => document.querySelector(selector);
let csrfToken = "";

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (options.method && options.method !== "GET") headers["X-CSRF-Token"] = csrfToken;
  const response = await fetch(path.startsWith("/") ? path : `${API}/${path}`,
    { credentials: "same-origin", ...options, headers });
  if (response.status === 401) { location.reload(); throw new Error("signed out"); }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).errors[0].message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response.status === 204 ? null : response.json();
}

function showError(error) { $("#error").textContent = error ? String(error.message || error) : ""; }

function cell(row, content) {
  const td = document.createElement("td");
  if (content instanceof Node) td.append(content); else td.textContent = content ?? "";
  row.append(td);
  return td;
}

function button(label, onClick, { disabled = false, name = label } = {}) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.disabled = disabled;
  b.setAttribute("aria-label", name);
  b.addEventListener("click", async () => {
    b.disabled = true;
    try { showError(null); await onClick(); } catch (error) { showError(error); }
    finally { b.disabled = false; }
  });
  return b;
}

const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");
function seconds(value) {
  if (value == null) return "";
  const m = Math.floor(value / 60);
  return `${m}:${(value - m * 60).toFixed(1).padStart(4, "0")}`;
}
function bytes(value) {
  if (value == null) return "";
  if (value < 1024) return `${value} B`;
  if (value < 1048576) return `${(value / 1024).toFixed(1)} KB`;
  return `${(value / 1048576).toFixed(1)} MB`;
}
const channelsText = (n) => (n === 2 ? "stereo" : "mono");
function stateBadge(state) {
  const span = document.createElement("span");
  span.className = `state-${state}`;
  span.textContent = state;
  return span;
}

// -- recordings list -------------------------------------------------------------------------

const list = { cursors: [null], page: 0 };

function filterQuery() {
  const query = new URLSearchParams(new FormData($("#filters")));
  for (const [key, value] of [...query]) if (!value) query.delete(key);
  query.set("page_size", "20");
  const cursor = list.cursors[list.page];
  if (cursor) query.set("cursor", cursor);
  return query;
}

async function loadList() {
  const body = await api(`recordings?${filterQuery()}`);
  const tbody = $("#recordings tbody");
  tbody.replaceChildren();
  for (const rec of body.data) {
    const row = document.createElement("tr");
    row.dataset.id = rec.id;
    const link = document.createElement("a");
    link.href = `/console/recordings/${rec.id}`;
    link.textContent = when(rec.created_at);
    cell(row, link);
    cell(row, seconds(rec.duration));
    cell(row, bytes(rec.size));
    cell(row, channelsText(rec.channels));
    cell(row, rec.format);
    cell(row, stateBadge(rec.state)).className = "state";
    cell(row, rec.call_id);
    tbody.append(row);
  }
  $("#no-recordings").hidden = body.data.length > 0;
  list.cursors[list.page + 1] = body.next;
  $("#older").disabled = !body.next;
  $("#newer").disabled = list.page === 0;
}

function firstPage() { list.cursors = [null]; list.page = 0; return loadList(); }

// -- live calls ------------------------------------------------------------------------------

async function control(call, rec, action) {
  await api(`calls/${call.call_id}/recordings/${rec.id}/${action}`,
    { method: "POST", body: "{}", headers: { "Content-Type": "application/json" } });
  await loadCalls();
}

async function loadCalls() {
  const body = await api("calls");
  const tbody = $("#calls tbody");
  tbody.replaceChildren();
  for (const call of body.data) {
    const row = document.createElement("tr");
    row.dataset.callId = call.call_id;
    cell(row, call.call_id);
    cell(row, call.from);
    cell(row, call.to);
    cell(row, call.state);
    cell(row, call.peer_call_id || "");
    const recordings = cell(row, "");
    for (const rec of call.recordings) {
      const item = document.createElement("div");
      item.className = "live-recording";
      item.dataset.recordingId = rec.id;
      item.append(stateBadge(rec.state), " ");
      const running = !TERMINAL.has(rec.state);
      item.append(
        button("Pause", () => control(call, rec, "pause"),
          { disabled: rec.state !== "recording", name: `Pause recording ${rec.control_id}` }),
        button("Resume", () => control(call, rec, "resume"),
          { disabled: rec.state !== "paused", name: `Resume recording ${rec.control_id}` }),
        button("Stop", () => control(call, rec, "stop"),
          { disabled: !running, name: `Stop recording ${rec.control_id}` }));
      recordings.append(item);
    }
    cell(row, button("Start recording", async () => {
      await api(`calls/${call.call_id}/recordings`,
        { method: "POST", body: "{}", headers: { "Content-Type": "application/json" } });
      await loadCalls();
    }, { name: `Start recording call ${call.call_id}` }));
    tbody.append(row);
  }
  $("#no-calls").hidden = body.data.length > 0;
}

// -- one recording ---------------------------------------------------------------------------

const view = { id: null, record: null, peaks: null, deliveriesTimer: null };

function metaList(rec) {
  const items = [
    ["Id", rec.id], ["State", rec.state], ["Call", rec.call_id], ["Control id", rec.control_id],
    ["Created", when(rec.created_at)], ["Started", when(rec.start_time)],
    ["Ended", when(rec.end_time)], ["Duration", seconds(rec.duration)],
    ["Size", bytes(rec.size)], ["Format", rec.format],
    ["Channels", channelsText(rec.channels)], ["Direction", rec.direction],
  ];
  if (rec.peer_call_id) items.push(["Bridged to", rec.peer_call_id]);
  items.push(["Who is where", rec.channel_legend.join("; ")]);
  if (rec.reason) items.push(["Reason", rec.reason]);
  const dl = $("#meta");
  dl.replaceChildren();
  for (const [name, value] of items) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value ?? "";
    dd.dataset.field = name.toLowerCase().replaceAll(" ", "-");
    dl.append(dt, dd);
  }
}

function deliveriesTable(deliveries) {
  const tbody = $("#deliveries tbody");
  tbody.replaceChildren();
  for (const d of deliveries) {
    const row = document.createElement("tr");
    for (const value of [d.event, d.url, d.status, d.attempts, d.last_error, when(d.last_time)]) {
      cell(row, value == null ? "" : String(value));
    }
    tbody.append(row);
  }
  $("#no-deliveries").hidden = deliveries.length > 0;
}

function playDuration() {
  const player = $("#player");
  return Number.isFinite(player.duration) && player.duration > 0
    ? player.duration : (view.record?.duration || 0);
}

function drawWaves() {
  if (!view.peaks) return;
  const player = $("#player");
  const duration = playDuration();
  const played = duration ? player.currentTime / duration : 0;
  for (const [index, canvas] of document.querySelectorAll(".wave canvas").entries()) {
    const peaks = view.peaks.channels[index];
    const width = canvas.width, height = canvas.height, middle = height / 2;
    const g = canvas.getContext("2d");
    g.clearRect(0, 0, width, height);
    const step = width / peaks.length;
    for (let i = 0; i < peaks.length; i++) {
      const x = i * step;
      g.fillStyle = x / width < played ? "#2f6fde" : "#8a93a6";
      const h = Math.max(1, peaks[i] * (height - 4));
      g.fillRect(x, middle - h / 2, Math.max(1, step - 0.5), h);
    }
    canvas.setAttribute("aria-valuenow", player.currentTime.toFixed(1));
    canvas.setAttribute("aria-valuetext", `${seconds(player.currentTime)} of ${seconds(duration)}`);
  }
}

function seek(time) {
  const player = $("#player");
  player.currentTime = Math.min(Math.max(0, time), playDuration());
  drawWaves();
}

async function loadWaves(rec) {
  const holder = $("#waveforms");
  holder.replaceChildren();
  view.peaks = null;
  if (!rec.audio_url) return;
  const width = Math.min(4000, Math.max(16, Math.round(holder.clientWidth || 800)));
  view.peaks = await api(`recordings/${rec.id}/peaks?bins=${width}`);
  view.peaks.channels.forEach((_, index) => {
    const label = rec.channel_legend[index] || rec.channel_legend[0] || `Channel ${index + 1}`;
    const wrap = document.createElement("div");
    wrap.className = "wave";
    const caption = document.createElement("span");
    caption.textContent = label;
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = 80;
    canvas.tabIndex = 0;
    canvas.setAttribute("role", "slider");
    canvas.setAttribute("aria-label", `Waveform, ${label}: click or use the arrow keys to seek`);
    canvas.setAttribute("aria-valuemin", "0");
    canvas.setAttribute("aria-valuemax", String(rec.duration || 0));
    canvas.dataset.channel = String(index);
    canvas.addEventListener("click", (event) => {
      const box = canvas.getBoundingClientRect();
      seek(((event.clientX - box.left) / box.width) * playDuration());
    });
    canvas.addEventListener("keydown", (event) => {
      const player = $("#player");
      const moves = { ArrowLeft: -5, ArrowRight: 5, PageDown: -30, PageUp: 30 };
      if (event.key in moves) seek(player.currentTime + moves[event.key]);
      else if (event.key === "Home") seek(0);
      else if (event.key === "End") seek(playDuration());
      else if (event.key === " ") { if (player.paused) player.play(); else player.pause(); }
      else return;
      event.preventDefault();
    });
    wrap.append(caption, canvas);
    holder.append(wrap);
  });
  drawWaves();
}

async function loadRecording(id, { reloadMedia = true } = {}) {
  const rec = await api(`recordings/${id}`);
  const hadAudio = Boolean(view.record?.audio_url);
  view.record = rec;
  $("#rec-title").textContent = `Recording ${rec.id} (${rec.state})`;
  metaList(rec);
  deliveriesTable(rec.deliveries);
  clearTimeout(view.deliveriesTimer);
  if (rec.deliveries.some((d) => d.status === "pending" || d.status === "retrying")) {
    view.deliveriesTimer = setTimeout(
      () => loadRecording(id, { reloadMedia: false }).catch(showError), 2000);
  }
  const download = $("#download");
  download.hidden = !rec.audio_url;
  if (rec.audio_url) download.href = rec.audio_url;
  $("#delete").disabled = !TERMINAL.has(rec.state);
  if (rec.audio_url && (reloadMedia || !hadAudio)) {
    $("#player").src = rec.audio_url;
    await loadWaves(rec);
  }
}

function setUpRecordingView(id) {
  view.id = id;
  $("#recording-view").hidden = false;
  const player = $("#player");
  for (const type of ["timeupdate", "seeked", "loadedmetadata"]) {
    player.addEventListener(type, drawWaves);
  }
  $("#delete").addEventListener("click", () => $("#confirm-delete").showModal());
  $("#confirm-delete").addEventListener("close", async () => {
    if ($("#confirm-delete").returnValue !== "delete") return;
    try {
      await api(`recordings/${id}`, { method: "DELETE" });
      location.assign("/console/");
    } catch (error) { showError(error); }
  });
  return loadRecording(id);
}

// -- live updates ----------------------------------------------------------------------------

function debounce(fn, ms) {
  let timer = null;
  return () => { clearTimeout(timer); timer = setTimeout(() => fn().catch(showError), ms); };
}

function listen(onEvent) {
  const source = new EventSource(`${API}/events`);
  source.addEventListener("open", () => { $("#live-status").textContent = "live"; });
  source.addEventListener("error", () => { $("#live-status").textContent = "reconnecting…"; });
  source.addEventListener("recording", (message) => onEvent(JSON.parse(message.data)));
}

// -- start -----------------------------------------------------------------------------------

async function main() {
  const session = await api("session");
  csrfToken = session.csrf_token;
  $("#project").textContent = `project ${session.project_id}`;
  $("#signout").addEventListener("click", async () => {
    await api("/console/signout", { method: "POST" }).catch(() => {});
    location.assign("/console/");
  });
  const match = location.pathname.match(/^\/console\/recordings\/([0-9a-f]{32})$/);
  if (match) {
    await setUpRecordingView(match[1]);
    const refresh = debounce(() => loadRecording(match[1], { reloadMedia: false }), 150);
    listen((event) => { if (event.recording_id === match[1]) refresh(); });
    return;
  }
  $("#list-view").hidden = false;
  $("#filters").addEventListener("submit", (event) => {
    event.preventDefault();
    firstPage().catch(showError);
  });
  $("#filters").addEventListener("reset", () => setTimeout(() => firstPage().catch(showError)));
  $("#older").addEventListener("click", () => { list.page += 1; loadList().catch(showError); });
  $("#newer").addEventListener("click", () => { list.page -= 1; loadList().catch(showError); });
  const refreshList = debounce(loadList, 150);
  const refreshCalls = debounce(loadCalls, 100);
  listen(() => { refreshList(); refreshCalls(); });
  setInterval(() => loadCalls().catch(showError), 2000);  // calls start and end unannounced
  await Promise.all([firstPage(), loadCalls()]);
}

main().catch(showError);
