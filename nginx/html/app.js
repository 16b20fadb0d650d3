// kws web page: upload a file or record from the microphone, POST it to the API, show the answer.
// Plain browser JavaScript, no build step. The API is reached through nginx under "api/".
"use strict";

(function () {
  const API = "api/";
  const MAX_RECORD_MS = 10000;
  const $ = (id) => document.getElementById(id);

  const els = {
    form: $("upload-form"), file: $("file"), threshold: $("threshold"), allLabels: $("all-labels"),
    send: $("send"), record: $("record"), status: $("status"), result: $("result"), error: $("error"),
    answer: $("answer"), placeholder: $("placeholder"), keyword: $("keyword"), confidence: $("confidence"),
    meta: $("meta"), scores: $("scores"), detBlock: $("detections-block"), timeline: $("timeline"),
    detections: $("detections"), modelInfo: $("model-info"),
  };

  let labelsCount = null;
  let inflight = null;
  let recorder = null;
  let recordTimer = null;
  let starting = false; // waiting for the microphone permission / device

  function setState(state) {
    els.result.dataset.state = state;
    els.result.setAttribute("aria-busy", state === "busy" ? "true" : "false");
  }

  function setStatus(text) {
    els.status.textContent = text || "";
  }

  function pct(x) {
    return (100 * x).toFixed(1) + "%";
  }

  function showError(message, code) {
    els.answer.hidden = true;
    els.placeholder.hidden = true;
    els.error.hidden = false;
    els.error.textContent = code ? message + " (" + code + ")" : message;
    setState("error");
  }

  function clearChildren(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function renderScores(scores) {
    clearChildren(els.scores);
    for (const s of scores) {
      const li = document.createElement("li");
      const name = document.createElement("span");
      name.className = "label";
      name.textContent = s.label;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.setAttribute("role", "meter");
      bar.setAttribute("aria-valuemin", "0");
      bar.setAttribute("aria-valuemax", "100");
      bar.setAttribute("aria-valuenow", (100 * s.score).toFixed(1));
      bar.setAttribute("aria-label", s.label + " " + pct(s.score));
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.width = Math.max(0, Math.min(100, 100 * s.score)) + "%";
      bar.appendChild(fill);
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = pct(s.score);
      li.append(name, bar, value);
      els.scores.appendChild(li);
    }
  }

  function renderDetections(detections, duration) {
    clearChildren(els.timeline);
    clearChildren(els.detections);
    if (!Array.isArray(detections)) {
      els.detBlock.hidden = true;
      return;
    }
    els.detBlock.hidden = false;
    const total = Math.max(duration || 0, 0.001);
    const axis = document.createElement("span");
    axis.className = "axis";
    axis.textContent = "0 s – " + total.toFixed(1) + " s";
    els.timeline.appendChild(axis);
    els.timeline.setAttribute("aria-label", detections.length
      ? "Timeline of " + total.toFixed(1) + " s with " + detections.length + " detection(s)"
      : "Timeline of " + total.toFixed(1) + " s with no detections");
    for (const d of detections) {
      const mark = document.createElement("span");
      mark.className = "mark";
      mark.style.left = (100 * d.start_s / total) + "%";
      mark.style.width = Math.max(0.5, 100 * (d.end_s - d.start_s) / total) + "%";
      mark.title = d.keyword + " at " + d.start_s.toFixed(2) + " s (" + pct(d.confidence) + ")";
      mark.textContent = d.keyword;
      els.timeline.appendChild(mark);
      const li = document.createElement("li");
      li.textContent = d.keyword + ": " + d.start_s.toFixed(2) + "–" + d.end_s.toFixed(2) + " s, confidence " + pct(d.confidence);
      els.detections.appendChild(li);
    }
    if (!detections.length) {
      const li = document.createElement("li");
      li.textContent = "No keyword found above the threshold.";
      els.detections.appendChild(li);
    }
  }

  function showResult(body) {
    els.error.hidden = true;
    els.placeholder.hidden = true;
    els.answer.hidden = false;
    els.keyword.textContent = body.keyword;
    els.confidence.textContent = pct(body.confidence);
    const model = body.model ? body.model.name + " v" + body.model.version : "";
    els.meta.textContent = body.duration_s.toFixed(2) + " s of audio" + (body.sample_rate ? " at " + body.sample_rate + " Hz" : "")
      + (model ? " · " + model : "") + " · request " + body.request_id;
    renderScores(body.scores || []);
    renderDetections(body.detections, body.duration_s);
    setState("done");
  }

  async function send(blob, filename) {
    if (inflight) inflight.abort();
    const controller = new AbortController();
    inflight = controller;
    const params = new URLSearchParams();
    const t = els.threshold.value.trim();
    if (t !== "") params.set("threshold", t);
    // Before /api/model has answered the label count is unknown: ask for "all" (the API caps top_k).
    if (els.allLabels.checked) params.set("top_k", String(labelsCount || 1000));
    const form = new FormData();
    form.append("file", blob, filename);
    setState("busy");
    setStatus("Recognising…");
    try {
      const resp = await fetch(API + "predict" + (params.toString() ? "?" + params : ""), {
        method: "POST", body: form, signal: controller.signal, headers: { "Accept": "application/json" },
      });
      let body = null;
      try {
        body = await resp.json();
      } catch (e) {
        body = null;
      }
      if (!resp.ok) {
        const err = body && body.error ? body.error : { message: "the server answered HTTP " + resp.status, code: null };
        showError(err.message, err.code);
        setStatus("");
        return;
      }
      if (!body) {
        showError("the server sent an answer that is not JSON");
        setStatus("");
        return;
      }
      showResult(body);
      setStatus("Done.");
    } catch (e) {
      if (e && e.name === "AbortError") return;
      showError("cannot reach the kws service: " + (e && e.message ? e.message : e));
      setStatus("");
    } finally {
      if (inflight === controller) inflight = null;
    }
  }

  function sendSelectedFile() {
    const file = els.file.files && els.file.files[0];
    if (!file) {
      showError("choose an audio file first");
      return;
    }
    send(file, file.name);
  }

  els.form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    sendSelectedFile();
  });
  els.file.addEventListener("change", () => {
    if (els.file.files && els.file.files[0]) sendSelectedFile();
  });

  // --- microphone ----------------------------------------------------------------------
  function pickMimeType() {
    const candidates = ["audio/webm;codecs=opus", "audio/webm", "audio/ogg;codecs=opus", "audio/ogg", "audio/mp4"];
    if (typeof MediaRecorder === "undefined" || !MediaRecorder.isTypeSupported) return "";
    return candidates.find((t) => MediaRecorder.isTypeSupported(t)) || "";
  }

  function extensionFor(type) {
    if (type.includes("ogg")) return "ogg";
    if (type.includes("mp4")) return "m4a";
    return "webm";
  }

  function resetRecordButton() {
    els.record.textContent = "Record from microphone";
    els.record.setAttribute("aria-pressed", "false");
    els.record.classList.remove("recording");
  }

  async function startRecording() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || typeof MediaRecorder === "undefined") {
      showError("this browser cannot record here (the microphone needs HTTPS or localhost and MediaRecorder support)");
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 }, video: false });
    } catch (e) {
      showError("the microphone is not available: " + (e && e.message ? e.message : e.name || e));
      return;
    }
    const mimeType = pickMimeType();
    let rec;
    try {
      rec = mimeType ? new MediaRecorder(stream, { mimeType }) : new MediaRecorder(stream);
    } catch (e) {
      stream.getTracks().forEach((tr) => tr.stop());
      showError("cannot record audio in this browser: " + (e && e.message ? e.message : e));
      return;
    }
    const chunks = [];
    rec.addEventListener("dataavailable", (ev) => {
      if (ev.data && ev.data.size) chunks.push(ev.data);
    });
    rec.addEventListener("stop", () => {
      clearTimeout(recordTimer);
      stream.getTracks().forEach((tr) => tr.stop());
      recorder = null;
      resetRecordButton();
      const type = rec.mimeType || mimeType || "audio/webm";
      const blob = new Blob(chunks, { type });
      if (!blob.size) {
        showError("the recording is empty");
        setStatus("");
        return;
      }
      send(blob, "recording." + extensionFor(type));
    });
    rec.addEventListener("error", (ev) => {
      showError("recording failed: " + (ev.error && ev.error.message ? ev.error.message : "unknown error"));
    });
    recorder = rec;
    rec.start();
    els.record.textContent = "Stop recording";
    els.record.setAttribute("aria-pressed", "true");
    els.record.classList.add("recording");
    setStatus("Recording… say a command word, then press Stop.");
    recordTimer = setTimeout(stopRecording, MAX_RECORD_MS);
  }

  function stopRecording() {
    if (recorder && recorder.state !== "inactive") {
      setStatus("Processing the recording…");
      recorder.stop();
    }
  }

  els.record.addEventListener("click", async () => {
    if (recorder) {
      stopRecording();
      return;
    }
    // A second click while getUserMedia is pending would start a second recorder and leave
    // the first stream (and the microphone) running: ignore it until the first start settles.
    if (starting) return;
    starting = true;
    els.record.disabled = true;
    try {
      await startRecording();
    } finally {
      starting = false;
      els.record.disabled = false;
    }
  });

  // --- model info ------------------------------------------------------------------------
  fetch(API + "model", { headers: { "Accept": "application/json" } })
    .then((r) => r.json().then((b) => ({ ok: r.ok, body: b })))
    .then(({ ok, body }) => {
      if (!ok) {
        els.modelInfo.textContent = "Model: not available (" + (body.error ? body.error.message : "error") + ")";
        return;
      }
      labelsCount = body.labels.length;
      const info = body.model_info || {};
      els.modelInfo.textContent = "Model: " + (info.name || "?") + " v" + (info.version || "?") + " · "
        + body.labels.length + " labels (" + body.labels.join(", ") + ") · runtime " + body.runtime;
    })
    .catch(() => {
      els.modelInfo.textContent = "Model: the kws service is not reachable";
    });
})();
