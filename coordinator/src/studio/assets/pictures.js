// tutti studio: an output's waveform and mel spectrogram, drawn from its decoded audio.

// ---- Waveform and mel spectrogram ------------------------------------------------------------

async function drawPictures(url, wave, mel) {
  const res = await fetch(url);
  if (!res.ok) throw new Error("HTTP " + res.status);
  const ctx = new (window.OfflineAudioContext || window.webkitOfflineAudioContext)(1, 1, 22050);
  const audio = await ctx.decodeAudioData(await res.arrayBuffer());
  const x = audio.getChannelData(0);
  drawWave(wave, x);
  drawMel(mel, x, audio.sampleRate);
}

function drawWave(canvas, x) {
  const g = canvas.getContext("2d");
  const { width: w, height: h } = canvas;
  g.fillStyle = "#f3f1ec";
  g.fillRect(0, 0, w, h);
  g.fillStyle = "#3b5bdb";
  const per = Math.max(1, Math.floor(x.length / w));
  for (let i = 0; i < w; i++) {
    let lo = 0, hi = 0;
    for (let j = i * per; j < Math.min(x.length, (i + 1) * per); j++) {
      if (x[j] < lo) lo = x[j];
      if (x[j] > hi) hi = x[j];
    }
    g.fillRect(i, ((1 - hi) * h) / 2, 1, Math.max(1, ((hi - lo) * h) / 2));
  }
}

// In-place radix-2 FFT of (re, im).
function fft(re, im) {
  const n = re.length;
  for (let i = 1, j = 0; i < n; i++) {
    let bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) { [re[i], re[j]] = [re[j], re[i]]; [im[i], im[j]] = [im[j], im[i]]; }
  }
  for (let len = 2; len <= n; len <<= 1) {
    const a = (-2 * Math.PI) / len;
    for (let i = 0; i < n; i += len) {
      for (let k = 0; k < len / 2; k++) {
        const c = Math.cos(a * k), s = Math.sin(a * k);
        const ur = re[i + k], ui = im[i + k];
        const vr = re[i + k + len / 2] * c - im[i + k + len / 2] * s;
        const vi = re[i + k + len / 2] * s + im[i + k + len / 2] * c;
        re[i + k] = ur + vr; im[i + k] = ui + vi;
        re[i + k + len / 2] = ur - vr; im[i + k + len / 2] = ui - vi;
      }
    }
  }
}

function drawMel(canvas, x, rate) {
  const n = 1024, bands = 64;
  const g = canvas.getContext("2d");
  const { width: w, height: h } = canvas;
  const mel = (f) => 2595 * Math.log10(1 + f / 700);
  const hz = (m) => 700 * (10 ** (m / 2595) - 1);
  const top = mel(rate / 2);
  const edges = Array.from({ length: bands + 2 }, (_, i) => Math.floor((hz((top * i) / (bands + 1)) / rate) * n));
  const frames = Math.min(w, Math.max(1, Math.floor((x.length - n) / 256)));
  const hop = Math.max(1, Math.floor((x.length - n) / frames));
  const img = g.createImageData(frames, bands);
  const window_ = Array.from({ length: n }, (_, i) => 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / n));
  const values = [];
  let max = -Infinity;
  for (let f = 0; f < frames; f++) {
    const re = new Float64Array(n), im = new Float64Array(n);
    for (let i = 0; i < n; i++) re[i] = (x[f * hop + i] || 0) * window_[i];
    fft(re, im);
    for (let b = 0; b < bands; b++) {
      let e = 0;
      for (let k = edges[b]; k <= edges[b + 2]; k++) {
        const wgt = k < edges[b + 1]
          ? (k - edges[b]) / Math.max(1, edges[b + 1] - edges[b])
          : (edges[b + 2] - k) / Math.max(1, edges[b + 2] - edges[b + 1]);
        e += wgt * (re[k] * re[k] + im[k] * im[k]);
      }
      const v = Math.log10(e + 1e-10);
      values.push(v);
      if (v > max) max = v;
    }
  }
  for (let f = 0; f < frames; f++) {
    for (let b = 0; b < bands; b++) {
      const t = Math.max(0, 1 - (max - values[f * bands + b]) / 8);
      const p = ((bands - 1 - b) * frames + f) * 4;
      img.data[p] = 255 * t;
      img.data[p + 1] = 180 * t * t;
      img.data[p + 2] = 90 + 120 * (1 - t);
      img.data[p + 3] = 255;
    }
  }
  const tmp = document.createElement("canvas");
  tmp.width = frames;
  tmp.height = bands;
  tmp.getContext("2d").putImageData(img, 0, 0);
  g.imageSmoothingEnabled = false;
  g.drawImage(tmp, 0, 0, w, h);
}
