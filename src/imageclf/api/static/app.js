// The imageclf page: one image -> POST /predict; several images, zips or a video -> POST /jobs,
// polled at /result/<id> with a progress bar and a cancel button. The Models view (#models) shows
// GET /models per version and, with an admin key, moves a canary share, promotes or rolls back
// through PUT /models/<m>/policy. Text from the service and from file names is only ever set as
// textContent, never as HTML.
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
    el("div", {class: "scroll"}, el("table", {},
      el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {scope: "col", text: h})))),
      el("tbody", {}, ...rows))));
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

function showView() {
  const models = location.hash === "#models";
  $("models").hidden = !models;
  $("drop").hidden = models;  // the form's options stay: the API key is there
  $("models-link").textContent = models ? "Classify" : "Models";
  $("models-link").href = models ? "#" : "#models";
  if (models) { clearOutput(); loadModels(); }
}

window.addEventListener("hashchange", showView);
$("admin-key").value = sessionStorage.getItem(ADMIN_STORAGE) || "";
showView();

$("files").addEventListener("change", () => { classify([...$("files").files]); $("files").value = ""; });
if (window.IMAGECLF.auth) $("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
