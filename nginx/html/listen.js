// kws web page, live listening: the "Listen" toggle. The microphone is captured by an AudioWorklet
// (listen-worklet.js) at 16 kHz, chunks of the session's recommended length are POSTed IN ORDER (those that queued up meanwhile
// together) to the session API (api/stream, see kws/serving/stream_api.py) and every answer
// updates the running list of detections, the level meter and the strip of class scores of the
// latest window.
// The microphone is released on Stop, when the page is hidden or left, and on any error.
"use strict";

(function () {
  const API = "api/";
  const RATE = 16000;
  // A window is scored once the chunk holding its last sample arrives. The session recommends
  // chunks of whole window strides (chunk.recommended_ms): every window then ends at a chunk's end
  // and no detection waits for the rest of a chunk to be captured.
  const DEFAULT_CHUNK_MS = 125;
  const QUEUE_MS = 5000; // audio waiting for the network before the stream is stopped
  const MAX_ITEMS = 100; // detections kept on screen
  const $ = (id) => document.getElementById(id);
  const els = {
    card: $("listen"), toggle: $("listen-toggle"), status: $("listen-status"), error: $("listen-error"),
    level: $("listen-level"), levelText: $("listen-level-text"), strip: $("listen-scores"),
    list: $("listen-detections"), empty: $("listen-empty"),
  };
  if (!els.toggle) return;

  let run = null; // the running capture: {stream, ctx, source, node, session, seq, offset, queue, ...}
  let starting = false;
  // What the page did when (performance.now() ms): for diagnostics and the page test. micAskedAt:
  // getUserMedia called (the microphone cannot deliver audio before), micAt: it resolved; per
  // detection shownAt: its line added, paintedAt: the animation frame that draws it.
  const trace = { chunks: [], detections: [], sessions: 0, micAskedAt: null, micAt: null, micLive: false };
  window.kwsListen = trace;

  function setStatus(text) { els.status.textContent = text || ""; }

  function showError(message) {
    els.error.textContent = message;
    els.error.hidden = false;
    els.card.dataset.state = "error";
  }

  function clearError() {
    els.error.hidden = true;
    els.error.textContent = "";
  }

  function setButton(listening) {
    els.toggle.textContent = listening ? "Stop listening" : "Listen";
    els.toggle.setAttribute("aria-pressed", listening ? "true" : "false");
    els.toggle.classList.toggle("recording", listening);
  }

  function micMessage(e) {
    const name = e && e.name;
    if (name === "NotAllowedError" || name === "SecurityError") {
      return "microphone access was denied: allow the microphone for this site in the browser, then press Listen again";
    }
    if (name === "NotFoundError" || name === "OverconstrainedError") {
      return "no microphone was found: connect one, then press Listen again";
    }
    if (name === "NotReadableError") return "the microphone is in use by another program or cannot be opened";
    return "the microphone is not available: " + (e && e.message ? e.message : name || e);
  }

  async function api(method, path, body, contentType) {
    const init = { method, headers: { "Accept": "application/json" } };
    if (body !== undefined) {
      init.body = body;
      init.headers["Content-Type"] = contentType;
    }
    const resp = await fetch(API + path, init);
    let json = null;
    try { json = await resp.json(); } catch (e) { json = null; }
    return { status: resp.status, ok: resp.ok, body: json };
  }

  function apiError(r) {
    const err = r.body && r.body.error;
    return err ? err.message + " (" + err.code + ")" : "the server answered HTTP " + r.status;
  }

  // --- the strip of class scores and the level meter ---------------------------------------
  function buildStrip(labels) {
    while (els.strip.firstChild) els.strip.removeChild(els.strip.firstChild);
    for (const label of labels) {
      const li = document.createElement("li");
      li.dataset.label = label;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.setAttribute("role", "meter");
      bar.setAttribute("aria-valuemin", "0");
      bar.setAttribute("aria-valuemax", "100");
      bar.setAttribute("aria-label", label);
      const fill = document.createElement("span");
      fill.className = "fill";
      bar.appendChild(fill);
      const name = document.createElement("span");
      name.className = "label";
      name.textContent = label;
      li.append(bar, name);
      els.strip.appendChild(li);
    }
  }

  function showScores(scores) {
    if (!scores) return;
    for (const li of els.strip.children) {
      const s = scores[li.dataset.label];
      if (s === undefined) continue;
      const bar = li.firstChild;
      bar.firstChild.style.height = Math.max(0, Math.min(100, 100 * s)) + "%";
      bar.setAttribute("aria-valuenow", (100 * s).toFixed(1));
      bar.title = li.dataset.label + " " + (100 * s).toFixed(1) + "%";
    }
  }

  function showLevel(samples) {
    let sum = 0;
    for (let i = 0; i < samples.length; i++) sum += samples[i] * samples[i];
    const rms = Math.sqrt(sum / Math.max(1, samples.length));
    const db = rms > 0 ? Math.max(-90, 20 * Math.log10(rms)) : -90;
    els.level.value = db;
    els.levelText.textContent = db.toFixed(0) + " dBFS";
  }

  function addDetection(d) {
    if (els.empty) els.empty.hidden = true;
    const li = document.createElement("li");
    li.dataset.keyword = d.keyword;
    li.dataset.timeS = String(d.time_s);
    const kw = document.createElement("strong");
    kw.textContent = d.keyword;
    li.append(d.time_s.toFixed(2) + " s  ", kw, "  " + (100 * d.confidence).toFixed(1) + "%");
    els.list.appendChild(li);
    while (els.list.children.length > MAX_ITEMS) els.list.removeChild(els.list.firstChild);
    const shown = { keyword: d.keyword, time_s: d.time_s, fired_s: d.fired_s, confidence: d.confidence,
      shownAt: performance.now(), paintedAt: null };
    trace.detections.push(shown);
    requestAnimationFrame((frameAt) => { shown.paintedAt = frameAt; });
  }

  // --- the session --------------------------------------------------------------------------
  async function openSession(r) {
    const opened = await api("POST", "stream");
    if (opened.status !== 201 || !opened.body) throw new Error(apiError(opened));
    r.session = opened.body.session;
    r.seq = 0;
    r.offset = r.t_s; // stream time already sent in earlier sessions
    r.maxSamples = Math.floor(opened.body.chunk.max_bytes / 4); // f32: 4 bytes a sample
    if (!r.chunkSamples) r.chunkSamples = Math.round(RATE * (opened.body.chunk.recommended_ms || DEFAULT_CHUNK_MS) / 1000);
    trace.sessions += 1;
    if (!els.strip.children.length) buildStrip(opened.body.labels);
    return opened.body;
  }

  async function postChunk(r, chunk) {
    for (let attempt = 0; attempt < 2; attempt++) {
      let resp;
      try {
        resp = await api("POST", "stream/" + r.session + "?format=f32&seq=" + r.seq, chunk.samples,
          "application/octet-stream");
      } catch (e) {
        throw new Error("cannot reach the kws service: " + (e && e.message ? e.message : e));
      }
      if (run !== r) return; // stopped meanwhile
      if (resp.ok && resp.body) {
        r.seq += 1;
        r.t_s = r.offset + resp.body.t_s;
        showScores(resp.body.scores);
        for (const d of resp.body.detections) addDetection({ ...d, time_s: d.time_s + r.offset, fired_s: d.fired_s + r.offset });
        return;
      }
      const code = resp.body && resp.body.error && resp.body.error.code;
      if (attempt === 0 && (code === "unknown_session" || code === "session_expired" || code === "session_closed")) {
        await openSession(r); // the server lost the session (restarted, drained): go on in a new one
        continue;
      }
      throw new Error(apiError(resp));
    }
  }

  // The chunks that queued up while a request was out go together in the next one (as many as the
  // session's chunk limit takes): one request per chunk would never catch up once the network or
  // the server fell behind, and every later word would be shown later still.
  function nextBatch(r) {
    let n = 0, k = 0;
    while (k < r.queue.length && (k === 0 || n + r.queue[k].samples.length <= r.maxSamples)) {
      n += r.queue[k].samples.length;
      k += 1;
    }
    const batch = r.queue.splice(0, k);
    if (k === 1) return batch[0];
    const samples = new Float32Array(n);
    let at = 0;
    for (const c of batch) {
      samples.set(c.samples, at);
      at += c.samples.length;
    }
    return { samples };
  }

  async function pump(r) {
    if (r.sending) return;
    r.sending = true;
    try {
      while (run === r && r.queue.length) {
        await postChunk(r, nextBatch(r));
      }
    } catch (e) {
      if (run === r) stop(e.message);
    } finally {
      r.sending = false;
    }
  }

  function onChunk(r, samples) {
    if (run !== r) return;
    r.captured += samples.length;
    trace.chunks.push({ end_s: r.captured / RATE, at: performance.now() });
    if (trace.chunks.length > 3000) trace.chunks.splice(0, 1000);
    showLevel(samples);
    if (r.queue.length * r.chunkSamples >= RATE * QUEUE_MS / 1000) {
      stop("the kws service does not keep up with the live audio; stopped");
      return;
    }
    r.queue.push({ samples });
    pump(r);
  }

  async function audioContext(stream) {
    // The browser resamples the microphone to 16 kHz itself where it can; otherwise the context
    // runs at the device rate and the worklet resamples.
    let ctx;
    try {
      ctx = new AudioContext({ sampleRate: RATE, latencyHint: "interactive" });
      return { ctx, source: ctx.createMediaStreamSource(stream) };
    } catch (e) {
      if (ctx) ctx.close();
      ctx = new AudioContext({ latencyHint: "interactive" });
      return { ctx, source: ctx.createMediaStreamSource(stream) };
    }
  }

  async function start() {
    clearError();
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showError("this browser cannot use a microphone here (it needs HTTPS or localhost)");
      return;
    }
    if (typeof AudioWorkletNode === "undefined" || typeof AudioContext === "undefined") {
      showError("this browser has no AudioWorklet: live listening needs a current browser");
      return;
    }
    let stream;
    trace.micAskedAt = performance.now();
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
        video: false,
      });
    } catch (e) {
      showError(micMessage(e));
      return;
    }
    trace.micAt = performance.now();
    trace.micLive = true;
    trace.chunks = [];
    trace.detections = [];
    const r = { stream, queue: [], sending: false, captured: 0, t_s: 0, offset: 0, seq: 0, session: null };
    run = r;
    try {
      await openSession(r);
      const { ctx, source } = await audioContext(stream);
      r.ctx = ctx;
      r.source = source;
      trace.contextRate = ctx.sampleRate;
      await ctx.audioWorklet.addModule("listen-worklet.js");
      if (run !== r) return;
      r.node = new AudioWorkletNode(ctx, "kws-capture", {
        numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
        processorOptions: { targetRate: RATE, chunkSamples: r.chunkSamples },
      });
      r.node.port.onmessage = (ev) => onChunk(r, ev.data);
      source.connect(r.node);
      r.node.connect(ctx.destination); // pulls the graph; the worklet outputs silence
      if (ctx.state === "suspended") await ctx.resume();
      for (const track of stream.getAudioTracks()) {
        track.addEventListener("ended", () => { if (run === r) stop("the microphone was disconnected"); });
      }
    } catch (e) {
      if (run === r) stop(e && e.message ? e.message : String(e));
      return;
    }
    els.card.dataset.state = "listening";
    setButton(true);
    setStatus("Listening… say command words, one after another.");
  }

  function release(r) {
    if (r.node) {
      r.node.port.onmessage = null;
      r.node.port.postMessage("stop");
      r.node.disconnect();
    }
    if (r.source) r.source.disconnect();
    for (const track of r.stream.getTracks()) track.stop();
    trace.micLive = r.stream.getTracks().some((t) => t.readyState === "live");
    if (r.ctx && r.ctx.state !== "closed") r.ctx.close();
    if (r.session) {
      // keepalive: the close still goes out when the page is being left
      fetch(API + "stream/" + r.session, { method: "DELETE", keepalive: true }).catch(() => {});
    }
  }

  function stop(errorMessage, statusText) {
    const r = run;
    run = null;
    if (r) release(r);
    setButton(false);
    if (errorMessage) {
      showError(errorMessage);
      setStatus("");
    } else {
      els.card.dataset.state = "idle";
      setStatus(statusText || "Stopped.");
    }
  }

  els.toggle.addEventListener("click", async () => {
    if (run) {
      stop();
      return;
    }
    if (starting) return; // a second click while the permission prompt is open
    starting = true;
    els.toggle.disabled = true;
    try {
      await start();
    } finally {
      starting = false;
      els.toggle.disabled = false;
    }
  });

  document.addEventListener("visibilitychange", () => {
    if (document.hidden && run) stop(null, "Stopped: the page was hidden (the microphone is released).");
  });
  window.addEventListener("pagehide", () => { if (run) stop(null, "Stopped."); });
})();
