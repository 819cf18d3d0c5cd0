// The imageclf page: one image -> POST /predict; several images, zips or a video -> POST /jobs,
// polled at /result/<id> with a progress bar and a cancel button. The Models view (#models) shows
// GET /models per version and, with an admin key, moves a canary share, promotes or rolls back
// through PUT /models/<m>/policy. The Quality view (#quality) charts live accuracy per version, drift
// and the promotion's history; the Review view (#review) labels the images the review rules kept.
// Text from the service and from file names is only ever set as textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "imageclf-api-key";
const ADMIN_STORAGE = "imageclf-admin-key";
const MODELS_POLL_MS = 2000;
const POLL_MS = 300;
const VIDEO_EXTENSIONS = /\.(mp4|m4v|mov|webm|mkv|avi|mpe?g|ts|3gp|flv|wmv|ogv)$/i;
let currentJob = null;
let modelsTimer = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value;
    else if (name === "style") Object.assign(node.style, value);
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function headers() {
  if (!window.IMAGECLF.auth) return {};
  const key = $("api-key").value.trim();
  sessionStorage.setItem(KEY_STORAGE, key);
  return key ? {Authorization: `Bearer ${key}`} : {};
}

function isVideo(file) {
  return file.type.startsWith("video/") || VIDEO_EXTENSIONS.test(file.name);
}

function isZip(file) {
  return /zip/.test(file.type) || /\.zip$/i.test(file.name);
}

// Plain words for what went wrong, then the service's own message.
function explain(status, message) {
  const plain = {
    400: "The service could not use this upload.",
    401: "An API key is needed, or the one entered is not valid.",
    404: "The service no longer knows this request (it may have expired).",
    409: "The job had already finished.",
    413: "That is too large for this service.",
    415: "That is not a file this service can read.",
    429: "This API key has used its share for now. Please wait a moment (or until tomorrow for a daily quota).",
    503: "The service is busy or restarting. Please try again in a few seconds.",
    504: "The service did not get to it in time.",
  }[status] || `The service answered with an error (${status}).`;
  return message ? `${plain} ${message}` : plain;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = false;
}

function clearOutput() {
  $("error").hidden = true;
  $("results").hidden = true;
  $("results-body").replaceChildren();
  $("job").hidden = true;
  $("result-link").hidden = true;
}

async function call(method, url, body) {
  let response;
  try {
    response = await fetch(url, {method, body, headers: headers()});
  } catch (err) {
    throw new Error("Cannot reach the service. Is it running?");
  }
  let data = {};
  try { data = await response.json(); } catch (err) { /* not JSON: keep the status */ }
  if (!response.ok) throw new Error(explain(response.status, data.error));
  return {status: response.status, data};
}

function bars(predictions) {
  const list = el("ol", {class: "bars"});
  for (const p of predictions) {
    const percent = (100 * p.probability).toFixed(1);
    list.append(el("li", {},
      el("span", {class: "label", text: p.label}),
      el("span", {class: "bar", "aria-hidden": "true"}, el("span", {style: {width: `${percent}%`}})),
      el("span", {class: "pct", text: `${percent}%`})));
  }
  return list;
}

function showResults(...nodes) {
  $("results-body").replaceChildren(...nodes);
  $("results").hidden = false;
}

function linkResult(id) {
  $("result-link").href = `/result/${id}`;
  $("result-link").hidden = false;
}

async function predict(file) {
  const form = new FormData();
  form.append("image", file, file.name);
  const params = new URLSearchParams({top: "5", model: $("model").value});
  const {status, data} = await call("POST", `/predict?${params}`, form);
  linkResult(data.id);
  if (status === 202) return follow(data.id, 1, "image");
  const image = el("img", {src: URL.createObjectURL(file), alt: `The uploaded image ${file.name}`});
  showResults(el("figure", {class: "single"}, image,
    el("figcaption", {}, el("p", {text: `${file.name} — ${data.model} v${data.model_version}`}), bars(data.predictions))));
}

async function submitJob(files) {
  const form = new FormData();
  const video = files.length === 1 && isVideo(files[0]);
  for (const file of files) form.append(video ? "video" : "images", file, file.name);
  if (video) form.append("fps", $("fps").value || "1");
  if (!video && $("evaluate").checked) {
    form.append("evaluate", "true");
    if ($("versions").value.trim()) form.append("versions", $("versions").value.trim());
  }
  form.append("top", "5");
  const {data} = await call("POST", `/jobs?${new URLSearchParams({model: $("model").value})}`, form);
  linkResult(data.id);
  return follow(data.id, data.total, data.kind);
}

async function follow(id, total, kind) {
  currentJob = id;
  $("job").hidden = false;
  $("job-title").textContent = kind === "video" ? "Classifying the video's frames…" : "Classifying…";
  setProgress(0, total);
  while (currentJob === id) {
    const {data} = await call("GET", `/result/${id}`);
    if ("done" in data) setProgress(data.done, data.total);
    if (["SUCCESS", "FAILURE", "REVOKED"].includes(data.status)) {
      currentJob = null;
      $("job").hidden = true;
      return finish(data);
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

function setProgress(done, total) {
  $("progress").max = Math.max(total, 1);
  $("progress").value = done;
  $("progress-label").textContent = `${done} of ${total} done`;
}

function finish(data) {
  if (data.status === "REVOKED") return showError(`Cancelled. ${data.error || ""}`.trim());
  if (data.status === "FAILURE") return showError(`It could not be classified. ${data.error || ""}`.trim());
  if (!data.kind) return showResults(bars(data.result.predictions));  // a /predict answered late
  if (data.kind === "video") return showVideo(data.result);
  if (data.result.evaluate) return showEvaluation(data.id, data.result);
  const rows = data.result.items.map((item) => el("tr", {},
    el("th", {scope: "row", text: item.name}),
    el("td", {}, item.status === "SUCCESS" ? bars(item.predictions.slice(0, 3))
                                           : el("span", {class: "failed", text: item.error || item.status}))));
  showResults(
    el("p", {text: `${data.result.succeeded} classified, ${data.result.failed} failed.`}),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {text: "File"}), el("th", {text: "Labels"}))),
       el("tbody", {}, ...rows)));
}

// Each label of a timeline gets its own colour, in the order labels first appear: hues a golden angle
// apart never repeat (a hash of the name let different labels share one).
const palette = new Map();
function colour(label) {
  if (!palette.has(label)) palette.set(label, `hsl(${(palette.size * 137.508) % 360} 65% ${palette.size % 2 ? 38 : 52}%)`);
  return palette.get(label);
}

function showVideo(result) {
  const summary = result.summary;
  palette.clear();
  if (!summary) return showError("No frame of the video could be classified.");
  const duration = Math.max(result.video.duration_s, 0.001);
  const timeline = el("div", {class: "timeline", role: "img",
    "aria-label": `Timeline of labels over ${duration.toFixed(1)} seconds`});
  const list = el("ol", {class: "segments"});
  for (const seg of summary.segments) {
    const span = `${seg.start.toFixed(1)}–${seg.end.toFixed(1)} s`;
    timeline.append(el("span", {title: `${span}: ${seg.label}`, style: {
      left: `${100 * seg.start / duration}%`, width: `${100 * (seg.end - seg.start) / duration}%`,
      background: colour(seg.label)}}));
    list.append(el("li", {}, el("span", {class: "swatch", "aria-hidden": "true", style: {background: colour(seg.label)}}),
      el("span", {text: `${span}  ${seg.label} (${seg.frames} frame${seg.frames === 1 ? "" : "s"})`})));
  }
  showResults(
    el("p", {class: "summary"}, "Mostly ", el("strong", {id: "summary-label", text: summary.label}),
       ` — ${(100 * summary.share).toFixed(0)}% of ${summary.frames} frames`),
    timeline, list);
}

// --- An evaluation's figures -----------------------------------------------------------------------

function ratio(value, digits = 1) {
  return value === null || value === undefined ? "—" : `${(100 * value).toFixed(digits)}%`;
}

async function heatmap(id, version) {
  // fetched with the key (an <img src> could not send it), shown from a blob
  const response = await fetch(`/result/${id}?format=png&version=${encodeURIComponent(version)}`, {headers: headers()});
  if (!response.ok) return el("p", {class: "failed", text: `The confusion matrix could not be drawn (${response.status}).`});
  return el("img", {class: "heatmap", src: URL.createObjectURL(await response.blob()),
                    alt: `Confusion matrix of version ${version}: true classes down, predicted across`});
}

async function showEvaluation(id, result) {
  const versions = Object.entries(result.versions);
  const summary = el("table", {id: "evaluation-summary"},
    el("thead", {}, el("tr", {}, ...["Version", "Images", "Accuracy", "Top-5", "Calibration error"]
      .map((h) => el("th", {scope: "col", text: h})))),
    el("tbody", {}, ...versions.map(([v, f]) => el("tr", {"data-version": v},
      el("th", {scope: "row", text: `v${v}`}), el("td", {text: String(f.images)}),
      el("td", {class: "accuracy", text: ratio(f.accuracy)}), el("td", {text: ratio(f.top5_accuracy)}),
      el("td", {text: f.expected_calibration_error === null ? "—" : f.expected_calibration_error.toFixed(3)})))));
  const sections = [];
  for (const [v, f] of versions) {
    const worst = Object.entries(f.per_class).filter(([, c]) => c.support)
      .sort((a, b) => (a[1].f1 ?? -1) - (b[1].f1 ?? -1)).slice(0, 5);
    const grid = el("ul", {class: "mistakes", "aria-label": `Images version ${v} got wrong`},
      ...f.wrong.filter((w) => result.thumbnails && result.thumbnails[w.file]).map((w) => el("li", {},
        el("img", {src: result.thumbnails[w.file], alt: w.file}),
        el("span", {text: `${w.true} → ${w.predicted} (${ratio(w.probability, 0)})`}))));
    sections.push(el("section", {class: "evaluated", "data-version": v},
      el("h3", {text: `Version ${v}`}), await heatmap(id, v),
      el("h4", {text: "Worst classes"}),
      el("ol", {class: "worst"}, ...worst.map(([name, c]) => el("li", {
        text: `${name}: F1 ${c.f1 === null ? "—" : c.f1.toFixed(2)}, recall ${ratio(c.recall, 0)} of ${c.support}`}))),
      el("h4", {text: `Wrong (${f.wrong_count})`}), grid));
  }
  const agreements = Object.entries(result.agreement || {}).map(([pair, a]) => {
    const [first, second] = pair.split("-");
    const d = a.disagreement_counts;
    return el("p", {class: "agreement", text: `Versions ${first} and ${second} agree on ${ratio(a.top1_agreement)}; ` +
      `of the disagreements ${d.first_right} went to v${first}, ${d.second_right} to v${second}, ` +
      `${d.neither_right} to neither.`});
  });
  showResults(summary, ...agreements, ...sections,
    el("p", {}, csvLink(id)));
}

function csvLink(id) {
  // a plain link could not send the API key: fetch the CSV with it, then save it from a blob
  const link = el("a", {href: `/result/${id}?format=csv`, id: "evaluation-csv", text: "Every prediction as CSV"});
  link.addEventListener("click", async (event) => {
    event.preventDefault();
    const response = await fetch(link.href, {headers: headers()});
    if (!response.ok) { link.replaceWith(el("span", {class: "failed", text: `The CSV could not be fetched (${response.status}).`})); return; }
    const save = el("a", {href: URL.createObjectURL(await response.blob()), download: `evaluation-${id}.csv`});
    document.body.append(save);
    save.click();
    save.remove();
  });
  return link;
}

async function classify(files) {
  clearOutput();
  if (!files.length) return;
  if (window.IMAGECLF.auth && !$("api-key").value.trim()) return showError(explain(401));
  const videos = files.filter(isVideo);
  try {
    if (videos.length && files.length > 1) {
      showError("Send one video at a time, or only images and zips.");
    } else if (files.length === 1 && !videos.length && !isZip(files[0])) {
      await predict(files[0]);
    } else {
      await submitJob(files);
    }
  } catch (err) {
    $("job").hidden = true;
    currentJob = null;
    showError(err.message);
  }
}

$("cancel").addEventListener("click", async () => {
  const id = currentJob;
  if (!id) return;
  currentJob = null;
  $("job").hidden = true;
  try {
    await call("DELETE", `/jobs/${id}`);
    showError("Cancelled: nothing more of this job will be classified.");
  } catch (err) {
    showError(err.message);
  }
});

const drop = $("drop");
drop.addEventListener("click", () => $("files").click());
drop.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") { event.preventDefault(); $("files").click(); }
});
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  classify([...event.dataTransfer.files]);
});
// --- The Models view ---------------------------------------------------------------------------

function percent(value) {
  return value === null || value === undefined ? "—" : `${Number(value).toFixed(1).replace(/\.0$/, "")}%`;
}

function shadowText(pairs) {
  if (!pairs || !pairs.length) return "—";
  return pairs.map((p) => p.top1_agreement === null ? `vs v${p.against}: nothing compared yet`
    : `vs v${p.against}: ${percent(100 * p.top1_agreement)} top-1 agreement over ${p.compared}, ` +
      `mean |Δp| ${p.mean_abs_dp.toFixed(4)}`).join("; ");
}

async function changePolicy(model, body, question) {
  if (!window.confirm(question)) return;
  const key = $("admin-key").value.trim();
  sessionStorage.setItem(ADMIN_STORAGE, key);
  $("models-error").hidden = true;
  let response, data = {};
  try {
    response = await fetch(`/models/${encodeURIComponent(model)}/policy`, {method: "PUT",
      headers: {"Content-Type": "application/json", ...(key ? {Authorization: `Bearer ${key}`} : {})},
      body: JSON.stringify(body)});
    data = await response.json();
  } catch (err) {
    data.error = data.error || "Cannot reach the service. Is it running?";
  }
  if (!response || !response.ok) {
    $("models-error").textContent = `The change was not made. ${data.error || ""}`.trim();
    $("models-error").hidden = false;
    return;
  }
  loadModels();
}

function versionActions(entry, version) {
  const routing = entry.routing || {};
  const state = entry.versions[version];
  if (!entry.policy || state.state !== "ready" || Number(version) === routing.default) return el("span", {text: ""});
  const traffic = Object.fromEntries(Object.entries(entry.policy.traffic || {}).filter(([k]) => k !== "default"));
  const share = el("input", {type: "number", min: "0", max: "100", step: "1", value: String(state.share || 0),
    id: `share-${entry.name}-${version}`, "aria-label": `Canary share of version ${version} of ${entry.name}, percent`});
  const set = el("button", {type: "button", text: "Set share"});
  set.addEventListener("click", () => changePolicy(entry.name,
    {traffic: {...traffic, [version]: Number(share.value), default: routing.default}},
    `Send ${share.value}% of ${entry.name}'s requests that name no version to version ${version}?`));
  const newer = Number(version) > routing.default;
  const move = el("button", {type: "button", class: "secondary",
    text: newer ? `Promote v${version}` : `Roll back to v${version}`});
  move.addEventListener("click", () => changePolicy(entry.name, {traffic: {default: Number(version)}},
    `Make version ${version} the default of ${entry.name}, with 100% of the requests that name no version?`));
  return el("span", {class: "actions"}, share, set, move);
}

function liveText(quality, drift) {
  // The last 24 hours: accuracy over the labelled answers (POST /feedback), and the drift verdict.
  const parts = [];
  if (quality && quality.labelled) parts.push(`${percent(100 * quality.accuracy)} right of ${quality.labelled} labelled`);
  if (drift && drift.drifted === true) parts.push("drift");
  else if (drift && drift.drifted === false) parts.push("no drift");
  return parts.length ? parts.join(" · ") : "—";
}

function modelTable(entry, quality = {}) {
  const routing = entry.routing || {};
  const drift = entry.drift || {};
  const rows = Object.entries(entry.versions).map(([version, s]) => el("tr", {"data-version": version},
    el("th", {scope: "row", text: `v${version}${Number(version) === routing.default ? " (default)" : ""}`}),
    el("td", {class: `state-${s.state}`, text: s.state, title: s.error || s.reason || ""}),
    el("td", {class: "share", text: s.shadow_share ? `${percent(s.share)} · shadow ${percent(s.shadow_share)}`
                                                   : percent(s.share)}),
    el("td", {text: s.requests === undefined ? "—" : String(s.requests)}),
    el("td", {text: s.mean_batch_size ? String(s.mean_batch_size) : "—"}),
    el("td", {text: s.inference_ms_per_image ? `${s.inference_ms_per_image} ms` : "—"}),
    el("td", {class: "shadow", text: shadowText(s.shadow)}),
    el("td", {class: "live", text: liveText(quality[version], drift[version])}),
    el("td", {}, versionActions(entry, version))));
  const head = ["Version", "State", "Share", "Requests", "Mean batch", "Per image", "Shadow", "Live (24 h)", ""];
  const notes = [...(routing.notes || []), ...(entry.policy_error ? [entry.policy_error] : []),
                 ...Object.entries(entry.versions).filter(([, s]) => s.error).map(([v, s]) => `v${v}: ${s.error}`)];
  return el("article", {class: "model", "data-model": entry.name},
    el("h3", {text: entry.name}),
    ...(notes.length ? [el("ul", {class: "notes"}, ...notes.map((n) => el("li", {text: n})))] : []),
    table(head, rows));
}

function table(head, rows, attrs = {}) {
  // A table that scrolls sideways on a narrow screen, with one header row.
  return el("div", {class: "scroll"}, el("table", attrs,
    el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {scope: "col", text: h})))),
    el("tbody", {}, ...rows)));
}

async function loadModels() {
  clearTimeout(modelsTimer);
  if ($("models").hidden) return;
  $("models-error").hidden = true;
  try {
    const {data} = await call("GET", "/models");
    // Live quality per model, where the prediction log is on (409 otherwise: the column stays empty).
    const quality = await Promise.all(data.models.map((m) => call("GET", `/models/${encodeURIComponent(m.name)}/quality`)
      .then(({data: q}) => q.versions || {}).catch(() => ({}))));
    $("models-body").replaceChildren(...data.models.map((m, i) => modelTable(m, quality[i])));
  } catch (err) {
    $("models-error").textContent = err.message;
    $("models-error").hidden = false;
  }
  modelsTimer = setTimeout(loadModels, MODELS_POLL_MS);
}

// --- The Quality view ----------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
const LINE_COLOURS = ["#1f5fbf", "#c2410c", "#15803d", "#7e22ce", "#b91c1c", "#0e7490"];
let qualityTimer = null;

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  node.append(...children);
  return node;
}

function accuracyChart(model, series) {
  // Live accuracy per version over the last 24 hours: one line per version, one point per hour with labels.
  const width = 480, height = 160, left = 34, bottom = 18, buckets = 24;
  const x = (start) => left + (width - left - 8) * ((Date.parse(start) - (Date.now() - 864e5)) / 864e5);
  const y = (accuracy) => 6 + (height - bottom - 6) * (1 - accuracy);
  const chart = svg("svg", {viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img",
    "aria-label": `Live accuracy of ${model} per version, last 24 hours`});
  for (const tick of [0, 0.5, 1]) {
    chart.append(svg("line", {x1: left, x2: width - 4, y1: y(tick), y2: y(tick), class: "axis"}),
      svg("text", {x: 2, y: y(tick) + 3}, `${tick * 100}%`));
  }
  chart.append(svg("text", {x: left, y: height - 4}, "24 h ago"), svg("text", {x: width - 30, y: height - 4}, "now"));
  const legend = el("p", {class: "legend"});
  Object.entries(series).forEach(([version, points], i) => {
    const colour = LINE_COLOURS[i % LINE_COLOURS.length];
    const spots = points.map((p) => `${x(p.start) + (width - left) / buckets / 2},${y(p.accuracy)}`);
    chart.append(svg("polyline", {points: spots.join(" "), fill: "none", stroke: colour, "stroke-width": 2}),
      ...points.map((p, j) => svg("circle", {cx: spots[j].split(",")[0], cy: spots[j].split(",")[1], r: 3,
        fill: colour}, svg("title", {}, `v${version}: ${percent(100 * p.accuracy)} of ${p.labelled} labelled`))));
    legend.append(el("span", {}, el("span", {class: "swatch", style: {background: colour}}),
      `v${version}: ${points.reduce((n, p) => n + p.labelled, 0)} labelled`));
  });
  return el("figure", {class: "accuracy"}, chart, el("figcaption", {}, legend));
}

function driftTable(drift) {
  const rows = Object.entries(drift || {}).map(([version, d]) => el("tr", {"data-version": version},
    el("th", {scope: "row", text: `v${version}`}),
    el("td", {text: String(d.window_answers)}),
    ...["confidence", "entropy", "classes"].map((name) => {
      const signal = d.signals[name];
      return el("td", {class: signal.drifted ? "flagged" : "", text: signal.psi === null ? "—" : signal.psi.toFixed(3)});
    }),
    el("td", {class: d.drifted ? "flagged" : "", text: d.drifted === null ? "too few answers" : d.drifted ? "drift"
                                                                                               : "no drift"})));
  if (!rows.length) return el("p", {class: "hint", text: "No answers in the last 24 hours."});
  return table(["Version", "Answers", "PSI confidence", "PSI entropy", "PSI classes", "Verdict"], rows,
               {class: "drift"});
}

function guardText(figures) {
  // "accuracy drop 0.52 (at most 0.01)": the guard's figure in the step, against its limit.
  return Object.entries(figures || {}).map(([guard, f]) => {
    const [, name, bound] = guard.match(/^(.*)_(at_most|at_least)$/) || [null, guard, "limit"];
    const value = f.value === null ? "—" : Number(f.value.toPrecision(3));
    return el("span", {class: f.ok === false ? "failed-guard" : "",
      text: `${name.replace(/_/g, " ")} ${value} (${bound.replace("_", " ")} ${f.limit})` +
            `${f.ok === null ? ", waiting for evidence" : ""}; `});
  });
}

function promotionBlock(promotion) {
  if (!promotion.plan && !promotion.history.length) {
    return el("p", {class: "hint", text: "No promotion plan (config.json key \"promotion\")."});
  }
  const next = promotion.next;
  const summary = `Candidate v${promotion.candidate ?? promotion.plan?.candidate}: ${promotion.status}` +
    (promotion.share !== null && promotion.share !== undefined ? `, canary ${percent(promotion.share)}` : "") +
    (next ? `; next: ${next.share === "default" ? "the default" : percent(next.share)} after ` +
            `${next.hold_left_s} s more, with ${next.min_compared} compared and ${next.min_labelled} labelled` : "");
  const rows = promotion.history.map((h) => el("tr", {"data-action": h.action},
    el("td", {text: new Date(h.at * 1000).toLocaleTimeString()}),
    el("td", {text: h.action + (h.dry_run ? " (dry run)" : "")}),
    el("td", {text: percent(h.share)}),
    el("td", {class: h.guard ? "failed-guard" : "", text: h.reason}),
    el("td", {class: "figures"}, ...guardText(h.figures))));
  return el("div", {class: "promotion"},
    el("p", {class: "status", text: summary}),
    ...(promotion.note ? [el("p", {class: "notes", text: promotion.note})] : []),
    table(["Time", "Decision", "Share", "Why", "Figures"], rows));
}

async function loadQuality() {
  clearTimeout(qualityTimer);
  if ($("quality").hidden) return;
  $("quality-error").hidden = true;
  try {
    const {data} = await call("GET", "/models");
    const blocks = await Promise.all(data.models.map(async (m) => {
      const name = encodeURIComponent(m.name);
      const quiet = (url) => call("GET", url).then(({data: d}) => d).catch(() => null);
      const [history, quality, promotion] = await Promise.all([quiet(`/models/${name}/quality/history`),
        quiet(`/models/${name}/quality`), quiet(`/models/${name}/promotion`)]);
      return el("article", {class: "model", "data-model": m.name}, el("h3", {text: m.name}),
        el("h4", {text: "Live accuracy"}),
        history ? accuracyChart(m.name, history.versions) : el("p", {class: "hint", text: "The prediction log is off."}),
        el("h4", {text: "Drift"}), quality ? driftTable(quality.drift) : el("p", {class: "hint", text: "—"}),
        el("h4", {text: "Promotion"}), promotion ? promotionBlock(promotion) : el("p", {class: "hint", text: "—"}));
    }));
    $("quality-body").replaceChildren(...blocks);
  } catch (err) {
    $("quality-error").textContent = err.message;
    $("quality-error").hidden = false;
  }
  qualityTimer = setTimeout(loadQuality, 5000);
}

// --- The Review view -----------------------------------------------------------------------------

let reviewItems = [];
let reviewClasses = [];
let labelling = null;

function reviewHeaders() {
  const key = $("review-key").value.trim();
  sessionStorage.setItem(ADMIN_STORAGE, key);
  return key ? {Authorization: `Bearer ${key}`} : {};
}

async function reviewCall(method, url, body) {
  const response = await fetch(url, {method, headers: {...reviewHeaders(),
    ...(body ? {"Content-Type": "application/json"} : {})}, body: body ? JSON.stringify(body) : undefined});
  const data = response.headers.get("Content-Type")?.includes("json") ? await response.json() : null;
  if (!response.ok) throw new Error(explain(response.status, data && data.error));
  return data;
}

async function imageUrl(path) {
  // The queue's images need the admin key, which an <img> cannot send: fetched, then shown from a blob.
  const response = await fetch(path, {headers: reviewHeaders()});
  if (!response.ok) throw new Error(explain(response.status, ""));
  return URL.createObjectURL(await response.blob());
}

async function loadReview() {
  if ($("review").hidden) return;
  $("review-error").hidden = true;
  const model = $("review-model").value;
  const reason = $("review-reason").value;
  try {
    const query = new URLSearchParams({model, labelled: "false", limit: "200", ...(reason ? {reason} : {})});
    const data = await reviewCall("GET", `/review?${query}`);
    reviewItems = data.items;
    reviewClasses = data.classes || [];
    if ($("review-reason").options.length === 1) {
      $("review-reason").append(...data.reasons.map((r) => el("option", {value: r, text: r.replace(/_/g, " ")})));
    }
    $("labeller-classes").replaceChildren(...reviewClasses.map((c) => el("option", {value: c})));
    $("review-counts").textContent = `${data.counts.waiting} waiting for a label, ${data.counts.labelled} labelled.`;
    $("review-grid").replaceChildren(...reviewItems.map(reviewTile));
  } catch (err) {
    $("review-error").textContent = err.message;
    $("review-error").hidden = false;
  }
}

function reviewTile(item) {
  const top = item.predictions[0] || {};
  const img = el("img", {alt: `Kept image ${item.id}`});
  imageUrl(item.thumbnail).then((url) => { img.src = url; }).catch(() => { img.alt = "image gone"; });
  const button = el("button", {type: "button", "data-id": item.id,
    "aria-label": `Label image ${item.id}: the model said ${top.label} at ${percent(100 * item.confidence)}`},
    img, el("span", {text: `${top.label ?? "?"} · ${percent(100 * item.confidence)} · v${item.version}`}),
    el("span", {}, ...item.reasons.map((r) => el("span", {class: "badge", text: r.replace(/_/g, " ")}))));
  button.addEventListener("click", () => openLabeller(item));
  return el("li", {}, button);
}

async function openLabeller(item) {
  labelling = item;
  $("labeller-error").hidden = true;
  $("labeller-search").value = "";
  $("labeller-why").textContent = `Kept because: ${item.reasons.join(", ").replace(/_/g, " ")}. ` +
    `Version ${item.version} answered ${item.predictions.map((p) => `${p.label} ${percent(100 * p.probability)}`)
      .join(", ")}.`;
  $("labeller-choices").replaceChildren(...item.predictions.map((p) => {
    const choice = el("button", {type: "button", class: "secondary", text: p.label});
    choice.addEventListener("click", () => { $("labeller-search").value = p.label; });
    return choice;
  }));
  $("labeller-image").src = await imageUrl(item.image).catch(() => "");
  $("labeller").showModal();
  $("labeller-search").focus();
}

async function saveLabel(event) {
  event.preventDefault();
  const label = $("labeller-search").value.trim();
  if (reviewClasses.length && !reviewClasses.includes(label)) {
    $("labeller-error").textContent = `"${label}" is not one of the model's classes: pick one from the list.`;
    $("labeller-error").hidden = false;
    return;
  }
  try {
    await reviewCall("POST", `/review/${encodeURIComponent(labelling.id).replace(/%3A/g, ":")}`, {label});
  } catch (err) {
    $("labeller-error").textContent = err.message;
    $("labeller-error").hidden = false;
    return;
  }
  $("labeller").close();
  const next = reviewItems[reviewItems.findIndex((i) => i.id === labelling.id) + 1];  // the list may be reloaded
  await loadReview();
  if (next && reviewItems.some((i) => i.id === next.id)) openLabeller(next);
}

// --- Views ---------------------------------------------------------------------------------------

const VIEWS = {"#models": ["models", loadModels], "#quality": ["quality", loadQuality], "#review": ["review", loadReview]};

function showView() {
  const [shown, load] = VIEWS[location.hash] || [null, null];
  for (const [id] of Object.values(VIEWS)) $(id).hidden = id !== shown;
  $("drop").hidden = shown !== null;  // the form's options stay: the API key is there
  $("classify-link").hidden = shown === null;
  if (shown) { clearOutput(); load(); }
}

window.addEventListener("hashchange", showView);
$("admin-key").value = sessionStorage.getItem(ADMIN_STORAGE) || "";
$("review-key").value = sessionStorage.getItem(ADMIN_STORAGE) || "";
$("review-model").addEventListener("change", loadReview);
$("review-reason").addEventListener("change", loadReview);
$("review-key").addEventListener("change", loadReview);
$("labeller-form").addEventListener("submit", saveLabel);
$("labeller-cancel").addEventListener("click", () => $("labeller").close());
showView();

$("files").addEventListener("change", () => { classify([...$("files").files]); $("files").value = ""; });
if (window.IMAGECLF.auth) $("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
