// skald's player page: listen to the stage over WebRTC (WHEP), speak on it, stop it, watch it.
// Plain browser JavaScript: no build step, no CDN. The page is served by the web actor itself.
"use strict";

const $ = (id) => document.getElementById(id);
const player = {
  pc: null,          // the RTCPeerConnection while connected
  session: null,     // the WHEP session URL (Location) to DELETE
  log: [],           // {what, t}: page events with performance.now() times (tests read them)
  lastRequest: null, // the last request id this page spoke
};
window.skaldPlayer = player;

function key() { return sessionStorage.getItem("skald-key") || ""; }
function authHeaders(extra) {
  const h = Object.assign({}, extra || {});
  if (key()) h["Authorization"] = "Bearer " + key();
  return h;
}

function say(text, kind) {
  const m = $("message");
  m.textContent = text;
  m.className = kind || "";
}

// An error answer of the gateway ({"error": {"message"}}) or a network failure, in words.
async function explain(resp, what) {
  if (resp.status === 401) {
    $("key").focus();
    return what + ": this server needs an API key. Enter it under “API key” and press “Use key”.";
  }
  let detail = "";
  try { detail = (await resp.json()).error.message; } catch (e) { detail = resp.statusText; }
  return what + " failed (" + resp.status + "): " + detail;
}
function unreachable(what) {
  return what + ": cannot reach the skald server at " + location.origin + ". Is `skald serve --http` running?";
}

async function api(path, body) {
  let resp;
  try {
    resp = await fetch(path, {
      method: "POST", headers: authHeaders({"Content-Type": "application/json"}), body: JSON.stringify(body),
    });
  } catch (e) { throw new Error(unreachable(path)); }
  if (!resp.ok) throw new Error(await explain(resp, path));
  return resp.json();
}

// ------------------------------------------------------------------ listening (WHEP)
function iceGathered(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") { clearTimeout(t); resolve(); } };
    const t = setTimeout(resolve, timeoutMs);  // send what was gathered: the answer still connects
    pc.addEventListener("icegatheringstatechange", done);
  });
}

async function connect() {
  if (player.pc) return;
  $("connect").disabled = true;
  say("Connecting…");
  const pc = new RTCPeerConnection({iceServers: []});
  player.pc = pc;
  pc.addTransceiver("audio", {direction: "recvonly"});
  pc.ontrack = (ev) => {
    const audio = $("audio");
    audio.srcObject = ev.streams && ev.streams[0] ? ev.streams[0] : new MediaStream([ev.track]);
    audio.volume = Number($("volume").value);
    audio.play().catch(() => say("The browser blocked playback: press “Connect” again to allow sound.", "error"));
  };
  pc.onconnectionstatechange = () => {
    $("p-conn").textContent = pc.connectionState;
    player.log.push({what: "connection-" + pc.connectionState, t: performance.now()});
    if (pc.connectionState === "connected") say("Connected: you hear the stage live.", "ok");
    if (pc.connectionState === "failed") { say("The connection to the stage failed; press “Connect” to retry.", "error"); teardown(); }
  };
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc, 2000);
    let resp;
    try {
      resp = await fetch("/whep", {
        method: "POST", headers: authHeaders({"Content-Type": "application/sdp"}), body: pc.localDescription.sdp,
      });
    } catch (e) { throw new Error(unreachable("Connect")); }
    if (resp.status !== 201) throw new Error(await explain(resp, "Connect"));
    player.session = new URL(resp.headers.get("Location"), location.href).href;
    await pc.setRemoteDescription({type: "answer", sdp: await resp.text()});
    player.log.push({what: "answered", t: performance.now()});
    $("disconnect").disabled = false;
  } catch (e) {
    say(e.message, "error");
    teardown();
  }
}

function teardown() {
  if (player.pc) { player.pc.close(); player.pc = null; }
  $("audio").srcObject = null;
  $("connect").disabled = false;
  $("disconnect").disabled = true;
  $("p-conn").textContent = "not connected";
}

async function disconnect() {
  const session = player.session;
  player.session = null;
  teardown();
  say("Disconnected.");
  if (session) {
    try { await fetch(session, {method: "DELETE", headers: authHeaders()}); } catch (e) { /* the server is gone */ }
  }
}

// ------------------------------------------------------------------ speaking, stopping
async function speak() {
  const text = $("text").value.trim();
  if (!text) { say("Type something to speak first.", "error"); $("text").focus(); return; }
  restoreVolume(0);
  try {
    const body = {text: text, barge_in: $("bargein").checked ? "interrupt" : "queue"};
    const reply = await api("/v1/narration", body);
    player.lastRequest = reply.request_id;
    player.log.push({what: "speak", t: performance.now(), request_id: reply.request_id});
    say("Speaking (" + reply.request_id + ").", "ok");
  } catch (e) { say(e.message, "error"); }
}

// Stop fades this page out at once (20 ms), while the cancel travels: the stage's own fade reaches
// the browsers a jitter buffer later (other listeners hear that one). The volume comes back once
// the faded stage has had time to arrive, or at the next Speak.
let restoreTimer = null;
function fadeLocally() {
  const audio = $("audio");
  const from = Number($("volume").value);
  [0.5, 0.25, 0.1, 0].forEach((k, i) => setTimeout(() => { audio.volume = from * k; }, 5 * i));
  clearTimeout(restoreTimer);
}
function restoreVolume(afterMs) {
  clearTimeout(restoreTimer);
  restoreTimer = setTimeout(() => { $("audio").volume = Number($("volume").value); }, afterMs);
}

async function stop() {
  player.log.push({what: "stop", t: performance.now()});
  fadeLocally();
  try {
    await api("/v1/narration/cancel", {all: true});
    say("Stopped: everything on the stage was cancelled.", "ok");
  } catch (e) { say(e.message, "error"); }
  restoreVolume(600);
}

// ------------------------------------------------------------------ the live panel
async function followEvents() {
  // fetch, not EventSource: EventSource cannot send the Authorization header.
  for (;;) {
    try {
      const resp = await fetch("/v1/events", {headers: authHeaders()});
      if (resp.status === 401) { say(await explain(resp, "Live events"), "error"); await waitForKey(); continue; }
      if (!resp.ok || !resp.body) throw new Error("events " + resp.status);
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buf += decoder.decode(value, {stream: true});
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          onEvent(buf.slice(0, cut));
          buf = buf.slice(cut + 2);
        }
      }
    } catch (e) {
      $("p-state").textContent = "server unreachable";
    }
    await new Promise((r) => setTimeout(r, 2000));  // reconnect after the server comes back
  }
}

let keyWaiters = [];
function waitForKey() { return new Promise((r) => keyWaiters.push(r)); }

function onEvent(block) {
  let kind = "", data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event: ")) kind = line.slice(7);
    else if (line.startsWith("data: ")) data += line.slice(6);
  }
  if (!kind || !data) return;
  let ev;
  try { ev = JSON.parse(data); } catch (e) { return; }
  if (kind === "playback_started") {
    $("p-state").textContent = "playing " + ev.request_id;
    if (typeof ev.ttfa_ms === "number") $("p-ttfa").textContent = ev.ttfa_ms.toFixed(0) + " ms";
  } else if (kind === "request_finished") {
    $("p-state").textContent = ev.status + " " + ev.request_id;
    if (typeof ev.ttfa_ms === "number" && ev.ttfa_ms >= 0) $("p-ttfa").textContent = ev.ttfa_ms.toFixed(0) + " ms";
  } else if (kind === "error") {
    say("skald: " + ev.message, "error");
  }
}

async function pollStage() {
  for (;;) {
    try {
      const resp = await fetch("/v1/stage", {headers: authHeaders()});
      if (resp.ok) {
        const s = await resp.json();
        $("p-fill").textContent = s.buffered_s == null ? "—" : s.buffered_s.toFixed(2) + " s";
        $("p-underruns").textContent = s.underruns == null ? "—" : String(s.underruns);
        $("p-listeners").textContent = String(s.listeners);
        if (!$("p-state").textContent.startsWith("playing")) $("p-state").textContent = s.state;
      }
    } catch (e) {
      $("p-state").textContent = "server unreachable";
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

// ------------------------------------------------------------------ wiring
$("connect").addEventListener("click", connect);
$("disconnect").addEventListener("click", disconnect);
$("speak").addEventListener("click", speak);
$("stop").addEventListener("click", stop);
$("volume").addEventListener("input", () => { $("audio").volume = Number($("volume").value); });
$("savekey").addEventListener("click", () => {
  sessionStorage.setItem("skald-key", $("key").value.trim());
  say("Key saved for this tab.", "ok");
  const waiters = keyWaiters; keyWaiters = []; waiters.forEach((r) => r());
});
$("key").addEventListener("keydown", (ev) => { if (ev.key === "Enter") $("savekey").click(); });
$("text").addEventListener("keydown", (ev) => { if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) speak(); });
document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") stop(); });  // Esc: stop the stage
$("key").value = key();
followEvents();
pollStage();
