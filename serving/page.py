"""The web page at ``/``: a prompt box, size and step fields, and the returned image.

One static HTML document with a little JavaScript that calls ``POST /v1/images/generations`` like any other client;
it holds no data. When the server wants an API key, the page's key field sends it as a bearer token.
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
  #result { display: block; margin-top: 1rem; max-width: 100%; image-rendering: pixelated; }
</style>
</head>
<body>
<h1>__TITLE__</h1>
<form id="form">
  <textarea id="prompt" name="prompt" placeholder="a red fox in the snow" required></textarea>
  <div>
    <label>width <input id="width" type="number" value="__WIDTH__" min="16" step="16"></label>
    <label>height <input id="height" type="number" value="__HEIGHT__" min="16" step="16"></label>
    <label>steps <input id="steps" type="number" value="__STEPS__" min="1" max="__MAX_STEPS__"></label>
    <label>seed <input id="seed" type="number" min="0" placeholder="random"></label>
  </div>
  <div><label>API key <input id="key" type="password" autocomplete="off" placeholder="if the server needs one">
  </label></div>
  <button id="generate" type="submit">Generate</button>
</form>
<p id="status"></p>
<img id="result" alt="">
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
</script>
</body>
</html>
"""


def render_page(*, title: str, root_path: str, width: int, height: int, steps: int, max_steps: int) -> str:
    """The page, with the API's location under ``root_path`` (Serve's route prefix) and the server's defaults."""
    values = {
        "__TITLE__": html.escape(title),
        # A JavaScript string literal; "<" escaped so that no prefix can close the script element.
        "__ROOT__": json.dumps(root_path.rstrip("/")).replace("<", "\\u003c"),
        "__WIDTH__": str(width),
        "__HEIGHT__": str(height),
        "__STEPS__": str(steps),
        "__MAX_STEPS__": str(max_steps),
    }
    page = _PAGE
    for placeholder, value in values.items():
        page = page.replace(placeholder, value)
    return page
