"""The web page at ``/``: a prompt box, size and step fields, and the returned image; with edits on, an Edit tab.

One static HTML document with a little JavaScript that calls ``POST /v1/images/generations`` (and
``/v1/images/edits``) like any other client; it holds no data. When the server wants an API key, the page's key field
sends it as a bearer token. The Edit tab uploads one or more images, lets the user paint the region to change on the
first with a brush (the mask sent is a PNG of the first image's size, transparent where painted), and shows the
result.
"""

from __future__ import annotations

import html
import json

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
  body { font-family: sans-serif; max-width: 42rem; margin: 2rem auto; padding: 0 1rem; }
  textarea { width: 100%; height: 5rem; }
  label { display: inline-block; margin: 0.5rem 1rem 0.5rem 0; }
  input[type=number] { width: 6rem; }
  #status { color: #555; min-height: 1.5rem; }
  #status.error { color: #b00020; }
  #result, #edit-result { display: block; margin-top: 1rem; max-width: 100%; image-rendering: pixelated; }
  #tabs button[aria-selected=true] { font-weight: bold; }
  #mask-canvas { display: block; margin-top: 0.5rem; width: 100%; max-width: 32rem; cursor: crosshair;
    image-rendering: pixelated; touch-action: none; border: 1px solid #ccc; }
</style>
</head>
<body>
<h1>__TITLE__</h1>
<div><label>API key <input id="key" type="password" autocomplete="off" placeholder="if the server needs one">
</label></div>
__EDIT_TABS__
<div id="generate-tab">
<form id="form">
  <textarea id="prompt" name="prompt" placeholder="a red fox in the snow" required></textarea>
  <div>
    <label>width <input id="width" type="number" value="__WIDTH__" min="16" step="16"></label>
    <label>height <input id="height" type="number" value="__HEIGHT__" min="16" step="16"></label>
    <label>steps <input id="steps" type="number" value="__STEPS__" min="1" max="__MAX_STEPS__"></label>
    <label>seed <input id="seed" type="number" min="0" placeholder="random"></label>
  </div>
  <button id="generate" type="submit">Generate</button>
</form>
<p id="status"></p>
<img id="result" alt="">
</div>
__EDIT_SECTION__
<script>
const form = document.getElementById("form");
const status = document.getElementById("status");
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = {
    prompt: document.getElementById("prompt").value,
    size: document.getElementById("width").value + "x" + document.getElementById("height").value,
    num_inference_steps: Number(document.getElementById("steps").value),
    response_format: "b64_json",
  };
  const seed = document.getElementById("seed").value;
  if (seed !== "") body.seed = Number(seed);
  const headers = {"Content-Type": "application/json"};
  const key = document.getElementById("key").value;
  if (key) headers["Authorization"] = "Bearer " + key;
  status.className = "";
  status.textContent = "generating...";
  document.getElementById("generate").disabled = true;
  try {
    const response = await fetch(__ROOT__ + "/v1/images/generations", {method: "POST", headers, body: JSON.stringify(body)});
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error ? answer.error.message : response.statusText);
    document.getElementById("result").src = "data:image/png;base64," + answer.data[0].b64_json;
    status.textContent = "seed " + answer.data[0].seed;
  } catch (error) {
    status.className = "error";
    status.textContent = error.message;
  } finally {
    document.getElementById("generate").disabled = false;
  }
});
__EDIT_SCRIPT__
</script>
</body>
</html>
"""

_EDIT_TABS = """<div id="tabs"><button id="tab-generate" type="button" aria-selected="true">Generate</button>
<button id="tab-edit" type="button" aria-selected="false">Edit</button></div>"""

_EDIT_SECTION = """<div id="edit-tab" hidden>
<form id="edit-form">
  <div><label>images (the first is edited; more are references, "Picture 2", ...)
    <input id="edit-images" type="file" accept="image/png,image/jpeg,image/webp" multiple required></label></div>
  <div><label>brush <input id="brush" type="number" value="8" min="1" max="256"></label>
    <button id="clear-mask" type="button">Clear mask</button> <span id="mask-info">no mask: the whole image</span></div>
  <canvas id="mask-canvas" width="0" height="0"></canvas>
  <textarea id="edit-prompt" placeholder="make the sky purple" required></textarea>
  <div>
    <label>width <input id="edit-width" type="number" min="16" step="16" placeholder="auto"></label>
    <label>height <input id="edit-height" type="number" min="16" step="16" placeholder="auto"></label>
    <label>steps <input id="edit-steps" type="number" value="__STEPS__" min="1" max="__MAX_STEPS__"></label>
    <label>seed <input id="edit-seed" type="number" min="0" placeholder="random"></label>
    <label>strength <input id="edit-strength" type="number" min="0.01" max="1" step="0.01" placeholder="masked"></label>
  </div>
  <button id="edit" type="submit">Edit</button>
</form>
<p id="edit-status"></p>
<img id="edit-result" alt="">
</div>"""

_EDIT_SCRIPT = """
const tabs = {generate: document.getElementById("generate-tab"), edit: document.getElementById("edit-tab")};
for (const name of Object.keys(tabs)) {
  document.getElementById("tab-" + name).addEventListener("click", () => {
    for (const other of Object.keys(tabs)) {
      tabs[other].hidden = other !== name;
      document.getElementById("tab-" + other).setAttribute("aria-selected", String(other === name));
    }
  });
}
// The view shows the first image with the painted region in red; the mask (the image's size) is opaque black,
// transparent where painted: OpenAI's convention, sent as a PNG.
const view = document.getElementById("mask-canvas");
const mask = document.createElement("canvas");
const maskInfo = document.getElementById("mask-info");
let source = null;
let painted = false;
function redraw() {
  const context = view.getContext("2d");
  context.clearRect(0, 0, view.width, view.height);
  if (source) context.drawImage(source, 0, 0);
  const overlay = document.createElement("canvas");
  overlay.width = mask.width;
  overlay.height = mask.height;
  const o = overlay.getContext("2d");
  o.fillStyle = "rgba(255, 0, 0, 0.5)";
  o.fillRect(0, 0, overlay.width, overlay.height);
  o.globalCompositeOperation = "destination-out";
  o.drawImage(mask, 0, 0);
  context.drawImage(overlay, 0, 0);
}
function clearMask() {
  const context = mask.getContext("2d");
  context.globalCompositeOperation = "source-over";
  context.fillStyle = "#000";
  context.fillRect(0, 0, mask.width, mask.height);
  painted = false;
  maskInfo.textContent = "no mask: the whole image";
  redraw();
}
document.getElementById("edit-images").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (!file) return;
  const image = new Image();
  image.onload = () => {
    source = image;
    view.width = mask.width = image.naturalWidth;
    view.height = mask.height = image.naturalHeight;
    clearMask();
  };
  image.src = URL.createObjectURL(file);
});
document.getElementById("clear-mask").addEventListener("click", clearMask);
let drawing = false;
function paint(event) {
  if (!drawing || !source) return;
  const rect = view.getBoundingClientRect();
  const x = (event.clientX - rect.left) * view.width / rect.width;
  const y = (event.clientY - rect.top) * view.height / rect.height;
  const radius = Number(document.getElementById("brush").value) / 2;
  const context = mask.getContext("2d");
  context.globalCompositeOperation = "destination-out";
  context.beginPath();
  context.arc(x, y, radius, 0, 2 * Math.PI);
  context.fill();
  painted = true;
  maskInfo.textContent = "mask painted: only the red region changes";
  redraw();
}
view.addEventListener("pointerdown", (event) => { drawing = true; paint(event); });
view.addEventListener("pointermove", paint);
window.addEventListener("pointerup", () => { drawing = false; });
const editForm = document.getElementById("edit-form");
const editStatus = document.getElementById("edit-status");
editForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = new FormData();
  const files = document.getElementById("edit-images").files;
  for (const file of files) body.append(files.length > 1 ? "image[]" : "image", file, file.name);
  if (painted) body.append("mask", await new Promise((done) => mask.toBlob(done, "image/png")), "mask.png");
  body.append("prompt", document.getElementById("edit-prompt").value);
  body.append("response_format", "b64_json");
  body.append("num_inference_steps", document.getElementById("edit-steps").value);
  const width = document.getElementById("edit-width").value;
  const height = document.getElementById("edit-height").value;
  if (width !== "" && height !== "") body.append("size", width + "x" + height);
  for (const [field, name] of [["edit-seed", "seed"], ["edit-strength", "strength"]]) {
    const value = document.getElementById(field).value;
    if (value !== "" && (name !== "strength" || painted)) body.append(name, value);
  }
  const headers = {};
  const key = document.getElementById("key").value;
  if (key) headers["Authorization"] = "Bearer " + key;
  editStatus.className = "";
  editStatus.textContent = "editing...";
  document.getElementById("edit").disabled = true;
  try {
    const response = await fetch(__ROOT__ + "/v1/images/edits", {method: "POST", headers, body});
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error ? answer.error.message : response.statusText);
    document.getElementById("edit-result").src = "data:image/png;base64," + answer.data[0].b64_json;
    editStatus.textContent = (painted ? "masked edit, " : "edit, ") + files.length + " image(s), seed " +
      answer.data[0].seed;
  } catch (error) {
    editStatus.className = "error";
    editStatus.textContent = error.message;
  } finally {
    document.getElementById("edit").disabled = false;
  }
});
"""


def render_page(
    *, title: str, root_path: str, width: int, height: int, steps: int, max_steps: int, edits: bool = False
) -> str:
    """The page, with the API's location under ``root_path`` (Serve's route prefix) and the server's defaults; with
    ``edits``, the Edit tab."""
    parts = (_EDIT_TABS, _EDIT_SECTION, _EDIT_SCRIPT) if edits else ("", "", "")
    page = _PAGE
    for placeholder, part in zip(("__EDIT_TABS__", "__EDIT_SECTION__", "__EDIT_SCRIPT__"), parts, strict=True):
        page = page.replace(placeholder, part)
    values = {
        "__TITLE__": html.escape(title),
        # A JavaScript string literal; "<" escaped so that no prefix can close the script element.
        "__ROOT__": json.dumps(root_path.rstrip("/")).replace("<", "\\u003c"),
        "__WIDTH__": str(width),
        "__HEIGHT__": str(height),
        "__STEPS__": str(steps),
        "__MAX_STEPS__": str(max_steps),
    }
    for placeholder, value in values.items():
        page = page.replace(placeholder, value)
    return page
