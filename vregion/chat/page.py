"""The page `vregion serve` shows: a question form, then one column per checkpoint (facts, results, answer).

A Jinja template rendered by Flask (values are HTML-escaped); its script posts the form to each checkpoint's
endpoint at once and appends the newline-delimited JSON it streams back. Element ids (#image, #prompt, #ask,
#error, #answer-I, #status-I with data-state idle | running | done | error) are what the browser test drives.
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>vregion: try your model</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1d1d1f; background: #fafafa; }
  h1 { font-size: 1.3rem; margin: 0 0 1rem; }
  form { display: grid; grid-template-columns: auto 1fr; gap: .6rem 1rem; align-items: start; max-width: 60rem; }
  textarea { width: 100%; min-height: 3.5rem; font: inherit; }
  .controls { display: flex; gap: 1rem; flex-wrap: wrap; align-items: center; }
  .controls input[type=number] { width: 5rem; }
  #preview { width: 6rem; height: 6rem; object-fit: contain; image-rendering: pixelated; border: 1px solid #ccc; }
  #preview:not([src]) { display: none; }
  #error { background: #fde8e8; color: #9b1c1c; border: 1px solid #f5b5b5; padding: .6rem .8rem; margin: 1rem 0;
           max-width: 60rem; white-space: pre-wrap; }
  .models { display: grid; grid-template-columns: repeat(auto-fit, minmax(22rem, 1fr)); gap: 1rem; margin-top: 1rem; }
  .card { background: white; border: 1px solid #ddd; border-radius: 6px; padding: .8rem 1rem; }
  .card h2 { font-size: .95rem; margin: 0 0 .5rem; word-break: break-all; }
  table { border-collapse: collapse; font-size: .85rem; margin-bottom: .6rem; }
  td { padding: .1rem .6rem .1rem 0; vertical-align: top; }
  td:first-child { color: #666; white-space: nowrap; }
  .answer { white-space: pre-wrap; background: #f3f6fb; border-radius: 4px; padding: .6rem; min-height: 2.5rem;
            font-size: 1.05rem; }
  .status { font-size: .8rem; color: #666; margin-top: .3rem; }
  .status[data-state=error] { color: #9b1c1c; }
</style>
</head>
<body>
<h1>vregion: try your model</h1>
<form id="ask-form">
  <label for="image">Image</label>
  <div><input id="image" name="image" type="file" accept="image/*"> <img id="preview" alt="the uploaded image"></div>
  <label for="prompt">Question</label>
  <textarea id="prompt" name="prompt" maxlength="{{ max_chars * 2 }}" placeholder="What colour is the shape?"></textarea>
  <span></span>
  <div class="controls">
    <label>max new tokens <input name="max_new_tokens" type="number" min="1" value="{{ sampling.max_new_tokens }}"></label>
    <label>temperature <input name="temperature" type="number" min="0" step="0.1" value="{{ sampling.temperature }}"></label>
    <label>top-p <input name="top_p" type="number" min="0" max="1" step="0.05" value="{{ sampling.top_p }}"></label>
    <button id="ask" type="submit">Ask</button>
  </div>
</form>
<div id="error" role="alert" hidden></div>
<div class="models">
{% for card in cards %}
  <section class="card">
    <h2>{{ card.checkpoint }}</h2>
    <table>
      {% for name, value in card.facts.items() %}<tr><td>{{ name }}</td><td>{{ value }}</td></tr>{% endfor %}
      {% for name, value in card.held_out.items() %}<tr><td>{{ name }}</td><td>{{ value }}</td></tr>{% endfor %}
      {% if not card.summary_file %}<tr><td>held-out results</td><td>no summary.json beside this checkpoint</td></tr>{% endif %}
    </table>
    <div class="answer" id="answer-{{ loop.index0 }}"></div>
    <div class="status" id="status-{{ loop.index0 }}" data-state="idle">ask a question</div>
  </section>
{% endfor %}
</div>
<script>
const COUNT = {{ cards|length }};
const form = document.getElementById("ask-form");
const errorBox = document.getElementById("error");
const errors = new Set();

document.getElementById("image").addEventListener("change", (ev) => {
  const file = ev.target.files[0];
  const preview = document.getElementById("preview");
  if (file) preview.src = URL.createObjectURL(file); else preview.removeAttribute("src");
});

function fail(i, message) {
  errors.add(message);  // the same bad image fails every checkpoint: say it once
  errorBox.textContent = [...errors].join("\n");
  errorBox.hidden = false;
  const status = document.getElementById("status-" + i);
  status.dataset.state = "error";
  status.textContent = "error: " + message;
}

async function ask(i, data) {
  const answer = document.getElementById("answer-" + i);
  const status = document.getElementById("status-" + i);
  answer.textContent = "";
  status.dataset.state = "running";
  status.textContent = "answering...";
  let response;
  try {
    response = await fetch("api/answer/" + i, { method: "POST", body: data });
  } catch (e) {
    return fail(i, "the server did not answer: " + e);
  }
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error; } catch (e) { /* not JSON: keep the HTTP status */ }
    return fail(i, message);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffered.indexOf("\n")) >= 0) {
      const event = JSON.parse(buffered.slice(0, end));
      buffered = buffered.slice(end + 1);
      if (event.delta !== undefined) answer.textContent += event.delta;
      if (event.done) {
        answer.textContent = event.answer;
        status.dataset.state = "done";
        status.textContent = event.tokens + " tokens in " + event.seconds.toFixed(2) + " s";
      }
    }
  }
  if (status.dataset.state === "running") fail(i, "the answer stream ended early");
}

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  errors.clear();
  errorBox.hidden = true;
  const data = new FormData(form);
  const button = document.getElementById("ask");
  button.disabled = true;
  try {
    await Promise.all([...Array(COUNT).keys()].map((i) => ask(i, data)));
  } finally {
    button.disabled = false;
  }
});
</script>
</body>
</html>
"""
