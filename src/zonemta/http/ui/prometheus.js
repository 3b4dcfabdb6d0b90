// The Prometheus text exposition read back into numbers: the dashboard draws the same
// figures GET /metrics gives a scraper, nothing counted on its own.

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

function unescapeLabel(value) {
  return value.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
}

function number(text) {
  if (text === "+Inf") return Infinity;
  if (text === "-Inf") return -Infinity;
  return Number(text);
}

/** Every sample of a text exposition: [{name, labels, value}]. */
export function parsePrometheus(text) {
  const samples = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const match = SAMPLE.exec(line);
    if (!match) continue;
    const labels = {};
    if (match[2]) {
      for (const label of match[2].matchAll(LABEL)) labels[label[1]] = unescapeLabel(label[2]);
    }
    samples.push({ name: match[1], labels, value: number(match[3]) });
  }
  return samples;
}

function matches(labels, wanted) {
  return Object.entries(wanted).every(([key, value]) => labels[key] === value);
}

/** The sum of the samples named ``name`` whose labels include ``wanted``. */
export function total(samples, name, wanted = {}) {
  let sum = 0;
  for (const sample of samples) {
    if (sample.name === name && matches(sample.labels, wanted)) sum += sample.value;
  }
  return sum;
}

/** Values of ``name`` by the value of one label: {labelValue: value}. */
export function byLabel(samples, name, label) {
  const out = {};
  for (const sample of samples) {
    if (sample.name !== name) continue;
    const key = sample.labels[label] ?? "";
    out[key] = (out[key] ?? 0) + sample.value;
  }
  return out;
}

/** A histogram summed over its other labels: {buckets: [[le, cumulative count]], sum, count}. */
export function histogram(samples, name, wanted = {}) {
  const buckets = new Map();
  for (const sample of samples) {
    if (sample.name !== `${name}_bucket` || !matches(sample.labels, wanted)) continue;
    const le = number(sample.labels.le);
    buckets.set(le, (buckets.get(le) ?? 0) + sample.value);
  }
  return {
    buckets: [...buckets.entries()].sort((a, b) => a[0] - b[0]),
    sum: total(samples, `${name}_sum`, wanted),
    count: total(samples, `${name}_count`, wanted),
  };
}

/** What a histogram gained between two readings (the observations in between). */
export function histogramDelta(before, after) {
  const earlier = new Map(before.buckets);
  return {
    buckets: after.buckets.map(([le, count]) => [le, count - (earlier.get(le) ?? 0)]),
    sum: after.sum - before.sum,
    count: after.count - before.count,
  };
}

/** The q-quantile of a histogram, interpolated within its bucket as Prometheus'
 * histogram_quantile() does; null without observations. */
export function quantile(q, hist) {
  const { buckets } = hist;
  if (!buckets.length) return null;
  const count = buckets[buckets.length - 1][1];
  if (count <= 0) return null;
  const rank = q * count;
  let lower = 0;
  let below = 0;
  for (const [le, cumulative] of buckets) {
    if (cumulative >= rank) {
      if (le === Infinity) return lower; // past the last finite bound: its edge
      const inBucket = cumulative - below;
      return inBucket > 0 ? lower + ((le - lower) * (rank - below)) / inBucket : le;
    }
    lower = le;
    below = cumulative;
  }
  return lower;
}

/** The figures the dashboard shows, from one scrape. */
export function snapshot(samples) {
  const status = (result) => total(samples, "zonemta_delivery_status_total", { result });
  return {
    delivered: status("delivered"),
    deferrals: status("deferred"),
    rejected: status("rejected"),
    received: total(samples, "zonemta_message_push_total", { result: "success" }),
    suspensions: total(samples, "zonemta_suspensions"),
    blacklisted: total(samples, "zonemta_blacklisted"),
    pools: byLabel(samples, "zonemta_connection_pool_size", "zone"),
    attempt: histogram(samples, "zonemta_smtp_attempt_duration_seconds"),
    queueTime: histogram(samples, "zonemta_queue_time_seconds", { result: "delivered" }),
  };
}
