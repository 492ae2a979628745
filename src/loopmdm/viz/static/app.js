/* The live page: reads the form, POSTs /api/generate and feeds the streamed NDJSON events to the viewer. */
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const viewer = new LoopViewer.Viewer($("viewer"));
  let info = null, controller = null;

  function setStatus(state, text) { const s = $("status"); s.dataset.state = state; s.textContent = text; }
  function showError(msg) { const e = $("error"); e.textContent = msg; e.style.display = msg ? "block" : "none"; }

  function optionInputs(box, options, prefix) {
    box.textContent = "";
    for (const o of options) {
      const id = `${prefix}-${o.name}`;
      const wrap = document.createElement("div");
      const input = document.createElement("input");
      input.id = id; input.dataset.option = o.name; input.dataset.type = o.type;
      if (o.choices) {
        const l = document.createElement("label"); l.htmlFor = id; l.textContent = o.name.replace(/_/g, " ");
        const sel = document.createElement("select");
        sel.id = id; sel.dataset.option = o.name; sel.dataset.type = "str";
        for (const c of o.choices) { const op = document.createElement("option"); op.value = op.textContent = c; sel.append(op); }
        if (o.default !== null) sel.value = o.default;
        wrap.append(l, sel); box.append(wrap); continue;
      }
      if (o.type === "bool") {
        wrap.className = "check"; input.type = "checkbox"; input.checked = !!o.default;
        const l = document.createElement("label"); l.htmlFor = id; l.textContent = o.name.replace(/_/g, " "); l.style.margin = "0";
        wrap.append(input, l);
      } else {
        const l = document.createElement("label"); l.htmlFor = id; l.textContent = o.name.replace(/_/g, " ");
        input.type = o.type === "str" ? "text" : "number";
        if (o.type === "float") input.step = "any";
        if (o.default !== null && o.default !== undefined) input.value = o.default;
        wrap.append(l, input);
      }
      box.append(wrap);
    }
  }

  function readOptions(box) {
    const out = {};
    for (const input of box.querySelectorAll("[data-option]")) {
      const t = input.dataset.type;
      if (t === "bool") out[input.dataset.option] = input.checked;
      else if (input.value.trim() === "") continue;
      else if (t === "str") out[input.dataset.option] = input.value;
      else out[input.dataset.option] = Number(input.value);
    }
    return out;
  }

  function fillSelect(sel, items, boxId, prefix, docId) {
    sel.textContent = "";
    for (const it of items) { const o = document.createElement("option"); o.value = o.textContent = it.name; sel.append(o); }
    const update = () => {
      const it = items.find((x) => x.name === sel.value) || { options: [], doc: "" };
      optionInputs($(boxId), it.options, prefix);
      if (docId) $(docId).textContent = it.doc || "";
    };
    sel.addEventListener("change", update);
    update();
  }

  const num = (id) => { const v = $(id).value.trim(); return v === "" ? null : Number(v); };

  function request() {
    const body = {
      prompt: $("prompt").value || null, template: $("template").value || null,
      sampler: $("sampler").value, sampler_options: readOptions($("sampler-options")),
      policy: $("policy").value, policy_options: readOptions($("policy-options")),
      steps: num("steps"), length: num("length"), num_samples: num("num_samples"), seed: num("seed"),
      temperature: num("temperature"), top_k: num("top_k"), top_p: num("top_p"), stop_at_eos: $("stop_at_eos").checked,
    };
    for (const k of ["steps", "num_samples", "seed", "temperature"]) if (body[k] === null) delete body[k];
    return body;
  }

  function handle(ev) {
    if (ev.type === "start") { viewer.reset(ev); setStatus("running", `running · 0 / ${ev.total_steps} steps`); }
    else if (ev.type === "step") { viewer.addStep(ev); setStatus("running", `running · step ${ev.step} / ${ev.total_steps} · ${ev.elapsed_s.toFixed(1)} s`); }
    else if (ev.type === "done") {
      viewer.finish(ev);
      const r = ev.report || {};
      setStatus("done", `done · ${viewer.steps.length} steps · ${(r.wall_time_s ?? 0).toFixed(2)} s`);
    } else if (ev.type === "error") { showError(ev.message); setStatus("error", `stopped (${ev.code})`); }
  }

  async function generate() {
    showError("");
    $("generate").disabled = true; $("stop").disabled = false;
    setStatus("running", "starting…");
    controller = new AbortController();
    try {
      const resp = await fetch("/api/generate", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(request()), signal: controller.signal });
      if (!resp.ok) {
        let msg = `${resp.status} ${resp.statusText}`;
        try { msg = (await resp.json()).error || msg; } catch (e) { /* not JSON */ }
        showError(msg); setStatus("error", `rejected (HTTP ${resp.status})`);
        return;
      }
      const reader = resp.body.getReader(), dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, i); buf = buf.slice(i + 1);
          if (line.trim()) handle(JSON.parse(line));
        }
      }
      if ($("status").dataset.state === "running") { showError("the stream ended early"); setStatus("error", "stream ended early"); }
    } catch (e) {
      if (e.name === "AbortError") setStatus("idle", "stopped by you");
      else { showError(`request failed: ${e.message}`); setStatus("error", "request failed"); }
    } finally {
      $("generate").disabled = false; $("stop").disabled = true; controller = null;
    }
  }

  async function init() {
    try {
      const resp = await fetch("/api/info");
      info = await resp.json();
    } catch (e) { showError(`cannot reach the server: ${e.message}`); return; }
    const m = info.model;
    const parts = m.checkpoint.split(/[\\/]/).filter(Boolean);
    const where = parts.length > 3 ? "…/" + parts.slice(-3).join("/") : m.checkpoint;
    $("model-info").title = m.checkpoint;
    $("model-info").textContent = `${where} · ${(m.parameters / 1e6).toFixed(2)}M params · window ${m.max_seq_len} · ` +
      `layers n_h=${m.n_h} / n_m=${m.n_m} (looped) / n_o=${m.n_o} · trained S ≤ ${m.s_max} · request limit ${info.limits.timeout_s}s`;
    $("length").placeholder = `${m.max_seq_len}`;
    if (info.template_help) $("template-hint").textContent = info.template_help;
    if (info.template_example) $("template").placeholder = info.template_example;
    fillSelect($("sampler"), info.samplers, "sampler-options", "sopt", "sampler-doc");
    fillSelect($("policy"), info.policies, "policy-options", "popt", "policy-doc");
    $("generate").addEventListener("click", generate);
    $("stop").addEventListener("click", () => controller && controller.abort());
    document.body.dataset.ready = "1";
  }
  init();
})();
