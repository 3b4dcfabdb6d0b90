// A small time-series line chart on a <canvas>: no library, redrawn on each new point and
// on resize. A null value leaves a gap.

const GRID = "#e3e8ef";
const AXIS_TEXT = "#667085";
const FONT = "11px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";

function niceCeiling(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (value <= step * power) return step * power;
  }
  return 10 * power;
}

export function formatNumber(value, digits = 2) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (value === 0) return "0";
  if (Math.abs(value) >= 100) return Math.round(value).toLocaleString("en");
  return Number(value.toFixed(digits)).toLocaleString("en", { maximumFractionDigits: digits });
}

export class LineChart {
  /**
   * @param canvas the <canvas>
   * @param legend an element that gets one entry per series with its latest value
   * @param series [{key, label, color}]
   * @param options {points: how many to keep, unit: shown after values}
   */
  constructor(canvas, legend, series, { points = 150, unit = "" } = {}) {
    this.canvas = canvas;
    this.legend = legend;
    this.series = series;
    this.points = points;
    this.unit = unit;
    this.data = []; // [{t, values: {key: number|null}}]
    this.legendValues = new Map();
    for (const item of series) {
      const entry = document.createElement("span");
      entry.className = "legend-item";
      const swatch = document.createElement("i");
      swatch.style.background = item.color;
      const label = document.createElement("span");
      label.textContent = item.label;
      const value = document.createElement("b");
      value.textContent = "–";
      value.dataset.series = item.key;
      entry.append(swatch, label, value);
      legend.append(entry);
      this.legendValues.set(item.key, value);
    }
    new ResizeObserver(() => this.draw()).observe(canvas);
  }

  push(t, values) {
    this.data.push({ t, values });
    if (this.data.length > this.points) this.data.shift();
    this.canvas.dataset.points = String(this.data.length);
    for (const item of this.series) {
      const value = values[item.key];
      this.legendValues.get(item.key).textContent =
        value === null || value === undefined ? "–" : `${formatNumber(value)}${this.unit}`;
    }
    this.draw();
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = FONT;

    const left = 52;
    const right = 12;
    const top = 10;
    const bottom = 22;
    const plotW = width - left - right;
    const plotH = height - top - bottom;
    let max = 0;
    for (const point of this.data) {
      for (const item of this.series) {
        const value = point.values[item.key];
        if (value !== null && value !== undefined && value > max) max = value;
      }
    }
    const yMax = niceCeiling(max);
    const now = this.data.length ? this.data[this.data.length - 1].t : Date.now();
    const span = this.data.length > 1 ? Math.max(now - this.data[0].t, 1) : 60_000;
    const x = (t) => left + plotW - ((now - t) / span) * plotW;
    const y = (v) => top + plotH - (v / yMax) * plotH;

    ctx.strokeStyle = GRID;
    ctx.fillStyle = AXIS_TEXT;
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const value = (yMax * i) / 4;
      const py = Math.round(y(value)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, py);
      ctx.lineTo(left + plotW, py);
      ctx.stroke();
      ctx.fillText(`${formatNumber(value)}${this.unit}`, left - 6, py);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let i = 0; i <= 4; i++) {
      const t = now - (span * (4 - i)) / 4;
      const seconds = Math.round((now - t) / 1000);
      const label = seconds === 0 ? "now" : seconds >= 120 ? `−${Math.round(seconds / 60)}m` : `−${seconds}s`;
      ctx.fillText(label, x(t), top + plotH + 6);
    }

    for (const item of this.series) {
      ctx.strokeStyle = item.color;
      ctx.lineWidth = 2;
      ctx.lineJoin = "round";
      ctx.beginPath();
      let drawing = false;
      for (const point of this.data) {
        const value = point.values[item.key];
        if (value === null || value === undefined) {
          drawing = false;
          continue;
        }
        if (drawing) ctx.lineTo(x(point.t), y(value));
        else ctx.moveTo(x(point.t), y(value));
        drawing = true;
      }
      ctx.stroke();
    }
  }
}
