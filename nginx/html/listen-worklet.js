// kws live listening: the AudioWorklet that captures the microphone (nginx/html/listen.js loads it).
// It runs on the audio thread: mono-mixes each 128-sample render quantum, resamples to the
// target rate when the AudioContext runs at another one, and posts Float32Array chunks of
// `chunkSamples` samples to the page. Resampling: a windowed-sinc low-pass evaluated at each
// output instant (no aliasing from 44.1/48 kHz down to 16 kHz); bypassed when the rates match.
"use strict";

class KwsCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = options.processorOptions || {};
    this.target = o.targetRate || 16000;
    this.chunkSamples = o.chunkSamples || 3200;
    this.ratio = sampleRate / this.target; // input samples per output sample
    this.out = new Float32Array(this.chunkSamples);
    this.filled = 0;
    this.stopped = false;
    this.port.onmessage = (ev) => { if (ev.data === "stop") this.stopped = true; };
    if (this.ratio !== 1) {
      this.halfTaps = Math.ceil(8 * Math.max(1, this.ratio)); // 8 zero crossings of the output rate each side
      this.cutoff = 0.45 / Math.max(1, this.ratio); // cycles per input sample, a little under the output Nyquist
      this.hist = new Float32Array(4096);
      this.histStart = 0; // absolute index of hist[0]
      this.histLen = 0;
      this.nextOut = 0; // absolute index of the next output sample
    }
  }

  emit(value) {
    this.out[this.filled++] = value;
    if (this.filled === this.chunkSamples) {
      this.port.postMessage(this.out); // structured clone: the page gets its own copy
      this.filled = 0;
    }
  }

  kernel(d) {
    if (d === 0) return 1;
    const x = 2 * this.cutoff * d;
    const sinc = Math.sin(Math.PI * x) / (Math.PI * x);
    return sinc * (0.5 + 0.5 * Math.cos(Math.PI * d / this.halfTaps));
  }

  resample(x) {
    // keep only what the next outputs still need, then append the new input
    const keepFrom = Math.max(this.histStart, Math.floor(this.nextOut * this.ratio) - this.halfTaps);
    const drop = keepFrom - this.histStart;
    if (drop > 0) {
      this.hist.copyWithin(0, drop, this.histLen);
      this.histLen -= drop;
      this.histStart = keepFrom;
    }
    if (this.histLen + x.length > this.hist.length) {
      const grown = new Float32Array(2 * (this.histLen + x.length));
      grown.set(this.hist.subarray(0, this.histLen));
      this.hist = grown;
    }
    this.hist.set(x, this.histLen);
    this.histLen += x.length;
    const end = this.histStart + this.histLen;
    for (;;) {
      const t = this.nextOut * this.ratio;
      const base = Math.floor(t);
      if (base + this.halfTaps >= end) break;
      let acc = 0;
      let norm = 0;
      for (let i = base - this.halfTaps + 1; i <= base + this.halfTaps; i++) {
        const w = this.kernel(t - i);
        norm += w;
        if (i >= this.histStart) acc += w * this.hist[i - this.histStart];
      }
      this.emit(acc / norm);
      this.nextOut++;
    }
  }

  process(inputs) {
    if (this.stopped) return false;
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    let mono = input[0];
    if (input.length > 1) {
      mono = new Float32Array(input[0].length);
      for (const ch of input) for (let i = 0; i < ch.length; i++) mono[i] += ch[i] / input.length;
    }
    if (this.ratio === 1) {
      for (let i = 0; i < mono.length; i++) this.emit(mono[i]);
    } else {
      this.resample(mono);
    }
    return true;
  }
}

registerProcessor("kws-capture", KwsCapture);
