/* LoopMDM denoising viewer: renders a generation step by step (tokens coloured by reveal step, hover details,
   loops-per-step and cumulative-FLOPs chart, replay slider, compute report). Shared by the live page (events
   streamed from /api/generate) and by the self-contained HTML export of a trajectory. No dependencies. */
(function () {
  "use strict";

  // viridis, sampled: early reveals dark purple, late reveals yellow
  const STOPS = [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142], [31, 158, 137],
    [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]];

  function stepColor(frac) {
    const x = Math.min(Math.max(frac, 0), 1) * (STOPS.length - 1);
    const i = Math.min(Math.floor(x), STOPS.length - 2), f = x - i;
    const c = STOPS[i].map((v, j) => Math.round(v + f * (STOPS[i + 1][j] - v)));
    const light = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] > 150;
    return { bg: `rgb(${c[0]},${c[1]},${c[2]})`, fg: light ? "#1f2933" : "#ffffff" };
  }

  function fmtFlops(x) {
    if (x === null || x === undefined || !isFinite(x)) return "–";
    if (x === 0) return "0 FLOP";
    const units = [[1e15, "P"], [1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];
    for (const [v, u] of units) if (Math.abs(x) >= v) return (x / v).toPrecision(3) + " " + u + "FLOP";
    return x.toPrecision(3) + " FLOP";
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function visiblePiece(p) {
    if (p === undefined) return "?";
    if (p === "") return "∅";
    return p.replace(/\n/g, "↵\n").replace(/\t/g, "→   ");
  }

  class Viewer {
    constructor(root) {
      this.root = root;
      root.classList.add("lv-root");
      root.textContent = "";
      this.replay = el("div", "lv-replay");
      this.playBtn = el("button", "lv-btn lv-play", "▶ Replay");
      this.playBtn.type = "button";
      this.slider = el("input", "lv-slider");
      Object.assign(this.slider, { type: "range", min: 0, max: 0, value: 0 });
      this.slider.setAttribute("aria-label", "denoising step");
      this.stepLabel = el("span", "lv-step-label", "step 0 / 0");
      this.replay.append(this.playBtn, this.slider, this.stepLabel);
      this.canvas = el("div", "lv-canvas");
      this.legend = el("div", "lv-legend");
      const seqPanel = el("section", "lv-panel lv-sequence");
      seqPanel.append(el("h2", null, "Sequence"), this.replay, this.canvas, this.legend);
      this.chart = el("section", "lv-panel lv-chart");
      this.reportPanel = el("section", "lv-panel lv-report-panel");
      this.finalPanel = el("section", "lv-panel lv-final");
      root.append(seqPanel, this.chart, this.reportPanel, this.finalPanel);
      this.tooltip = document.querySelector(".lv-tooltip") || document.body.appendChild(el("div", "lv-tooltip"));
      this.slider.addEventListener("input", () => { this.follow = +this.slider.value === this.steps.length;
        this.stopPlay(); this.view = +this.slider.value; this.pending = false; this.render(); });
      this.playBtn.addEventListener("click", () => (this.timer ? this.stopPlay() : this.play()));
      this.canvas.addEventListener("mouseover", (ev) => this.hover(ev));
      this.canvas.addEventListener("mousemove", (ev) => this.moveTip(ev));
      this.canvas.addEventListener("mouseout", () => { this.tooltip.style.display = "none"; });
      this.reset(null);
    }

    reset(meta) {
      this.stopPlay();
      this.meta = meta;
      this.pieces = new Map();
      this.steps = [];
      this.firstSeen = null;
      this.traj = null; this.report = null; this.texts = null;
      this.view = 0; this.follow = true; this.spans = null;
      this.canvas.textContent = "";
      this.canvas.append(el("div", "lv-empty", meta ? "waiting for the first denoising step…" :
        "Set the options and press Generate; tokens appear here as they are revealed."));
      this.renderLegend();
      this.chart.innerHTML = "<h2>Loops per step and cumulative FLOPs</h2>";
      this.reportPanel.innerHTML = "<h2>Compute report</h2>";
      this.reportPanel.append(el("div", "lv-empty", "—"));
      this.finalPanel.innerHTML = "<h2>Final text</h2>";
      this.finalPanel.append(el("div", "lv-empty", "—"));
      this.syncSlider();
      if (meta) this.renderChart();
    }

    addPieces(p) { for (const k in p || {}) this.pieces.set(+k, p[k]); }

    addStep(ev) {
      this.addPieces(ev.pieces);
      this.steps.push({ step: ev.step, tokens: ev.tokens, revealed: ev.revealed, loops: ev.loops,
        flops: ev.flops_so_far });
      if (!this.firstSeen) this.firstSeen = ev.revealed.map((row) => row.map(() => 0));
      ev.revealed.forEach((row, n) => row.forEach((r, i) => {
        if (r && !this.firstSeen[n][i]) this.firstSeen[n][i] = ev.step;
      }));
      if (this.follow) this.view = this.steps.length;
      this.syncSlider();
      this.schedule();
    }

    finish(ev) {
      this.addPieces(ev.pieces);
      const last = this.steps[this.steps.length - 1], mask = this.meta ? this.meta.mask_id : -1;
      if (last && ev.tokens) {  // the final tokens (stop_at_eos pads after the first EOS once sampling ends)
        last.tokens = ev.tokens;
        last.revealed = ev.tokens.map((row) => row.map((id) => (id === mask ? 0 : 1)));
      }
      this.traj = ev.trajectory; this.report = ev.report; this.texts = ev.texts;
      if (!this.steps.length && ev.tokens) this.firstSeen = ev.tokens.map((r) => r.map(() => 0));
      this.view = this.steps.length; this.follow = true;
      this.syncSlider();
      this.pending = false;
      this.renderReport(); this.renderFinal(); this.render();
    }

    get totalSteps() { return (this.meta && this.meta.total_steps) || this.steps.length; }

    syncSlider() {
      this.slider.max = this.steps.length; this.slider.value = this.view;
      this.slider.disabled = this.steps.length === 0;
      this.playBtn.disabled = this.steps.length === 0;
      this.stepLabel.textContent = `step ${this.view} / ${this.totalSteps}`;
    }

    schedule() {  // at most one render per frame; the timer also runs in background tabs (no frames there)
      if (this.pending) return;
      this.pending = true;
      const run = () => { if (!this.pending) return; this.pending = false; this.render(); };
      requestAnimationFrame(run);
      setTimeout(run, 150);
    }

    play() {
      if (!this.steps.length) return;
      this.follow = false;
      if (this.view >= this.steps.length) this.view = 0;
      const dt = Math.max(40, Math.min(400, 4000 / this.steps.length));
      this.playBtn.textContent = "❚❚ Pause";
      this.timer = setInterval(() => {
        this.view += 1;
        if (this.view >= this.steps.length) { this.view = this.steps.length; this.follow = true; this.stopPlay(); }
        this.syncSlider(); this.render();
      }, dt);
    }

    stopPlay() {
      if (this.timer) clearInterval(this.timer);
      this.timer = null;
      if (this.playBtn) this.playBtn.textContent = "▶ Replay";
    }

    revealStep(n, i) {
      if (this.traj) return this.traj.reveal_step[n][i];
      if (this.meta && this.meta.given && this.meta.given[n][i]) return -1;
      return this.firstSeen ? this.firstSeen[n][i] : 0;
    }

    buildSpans(N, L) {
      this.canvas.textContent = "";
      this.spans = [];
      for (let n = 0; n < N; n++) {
        const box = el("div", "lv-sample");
        if (N > 1) box.append(el("div", "lv-sample-label", `sample ${n + 1}`));
        const seq = el("div", "lv-seq");
        seq.dataset.sample = n;
        const row = [];
        for (let i = 0; i < L; i++) {
          const s = el("span", "lv-tok lv-mask", "░");
          s.dataset.n = n; s.dataset.i = i;
          seq.append(s); row.push(s);
        }
        box.append(seq); this.canvas.append(box); this.spans.push(row);
      }
    }

    render() {
      const k = this.view;
      const snap = k > 0 ? this.steps[k - 1] : null;
      const ref = snap || this.steps[0];
      if (ref && (!this.spans || this.spans.length !== ref.tokens.length)) this.buildSpans(ref.tokens.length, ref.tokens[0].length);
      if (this.spans && ref) {
        const T = this.totalSteps, mask = this.meta ? this.meta.mask_id : -1;
        const specials = new Set((this.meta && this.meta.special_ids) || []);
        this.spans.forEach((row, n) => row.forEach((span, i) => {
          const rs = this.revealStep(n, i);
          const given = rs === -1;
          const shown = given || (snap && snap.revealed[n][i] && (rs === 0 || rs <= k));
          const id = snap ? snap.tokens[n][i] : ref.tokens[n][i];
          let cls = "lv-tok";
          if (!shown || id === mask) {
            cls += " lv-mask"; span.textContent = "░"; span.style.background = ""; span.style.color = "";
          } else {
            span.textContent = visiblePiece(this.pieces.get(id));
            if (given) { cls += " lv-given"; span.style.background = ""; span.style.color = ""; }
            else {
              const c = stepColor(T > 1 ? (rs - 1) / (T - 1) : 0);
              span.style.background = c.bg; span.style.color = c.fg;
              if (rs === k) cls += " lv-new";
            }
            if (specials.has(id)) cls += " lv-special";
          }
          span.className = cls;
        }));
      }
      this.stepLabel.textContent = `step ${k} / ${this.totalSteps}`;
      this.renderChart();
    }

    renderLegend() {
      const T = this.totalSteps || 1;
      const grad = Array.from({ length: 11 }, (_, j) => stepColor(j / 10).bg).join(",");
      this.legend.innerHTML = "";
      const a = el("span"); a.append("revealed at step 1");
      const g = el("span", "lv-grad"); g.style.background = `linear-gradient(90deg, ${grad})`;
      a.append(g, `step ${T}`);
      const given = el("span"); const gs = el("span", "lv-swatch"); gs.style.background = "var(--given)";
      given.append(gs, "given (prompt / template)");
      const m = el("span"); const ms = el("span", "lv-swatch"); ms.style.background = "var(--mask)";
      m.append(ms, "still masked");
      const nw = el("span"); const ns = el("span", "lv-swatch"); ns.style.boxShadow = "0 0 0 2px #f59f00 inset";
      nw.append(ns, "revealed at the shown step");
      this.legend.append(a, given, m, nw, el("span", null, "· hover a token for its confidence and loops"));
    }

    series() {
      const T = this.totalSteps;
      const pts = [];
      for (let s = 1; s <= this.steps.length; s++) {
        const st = this.steps[s - 1];
        let loops = st.loops, flops = st.flops;
        if (this.traj) {
          loops = this.traj.loops_per_step[s - 1] ?? loops;
          flops = flops ?? this.traj.cumulative_flops[s - 1];
        }
        pts.push({ s, loops: +loops, flops: flops ?? 0 });
      }
      return { T, pts };
    }

    renderChart() {
      if (!this.meta && !this.steps.length) return;
      const { T, pts } = this.series();
      const W = 720, H = 230, ml = 44, mr = 74, mt = 28, mb = 36, pw = W - ml - mr, ph = H - mt - mb;
      const sMax = (this.meta && this.meta.model && this.meta.model.s_max) || 1;
      const maxL = Math.max(1, sMax, ...pts.map((p) => p.loops));
      const maxF = Math.max(1, ...pts.map((p) => p.flops));
      const x = (s) => ml + (T > 1 ? (s - 1) / (T - 1) : 0.5) * pw;
      const yl = (v) => mt + ph * (1 - v / maxL), yf = (v) => mt + ph * (1 - v / maxF);
      const parts = [`<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="loops per step and cumulative FLOPs">`];
      const lstep = Math.max(1, Math.ceil(maxL / 6));
      for (let v = 0; v <= maxL; v += lstep) {
        parts.push(`<line class="lv-grid" x1="${ml}" x2="${ml + pw}" y1="${yl(v)}" y2="${yl(v)}"/>`,
          `<text class="lv-tick" x="${ml - 6}" y="${yl(v) + 4}" text-anchor="end">${v}</text>`);
      }
      for (let j = 0; j <= 4; j++) {
        const v = (maxF * j) / 4;
        parts.push(`<text class="lv-tick" x="${ml + pw + 6}" y="${yf(v) + 4}">${pts.length ? fmtFlops(v).replace("FLOP", "") : ""}</text>`);
      }
      const xt = T <= 10 ? 1 : Math.ceil(T / 8);
      for (let s = 1; s <= T; s += xt) parts.push(`<text class="lv-tick" x="${x(s)}" y="${mt + ph + 16}" text-anchor="middle">${s}</text>`);
      parts.push(`<line class="lv-axis" x1="${ml}" x2="${ml}" y1="${mt}" y2="${mt + ph}"/>`,
        `<line class="lv-axis" x1="${ml}" x2="${ml + pw}" y1="${mt + ph}" y2="${mt + ph}"/>`,
        `<line class="lv-axis" x1="${ml + pw}" x2="${ml + pw}" y1="${mt}" y2="${mt + ph}"/>`,
        `<text class="lv-tick" x="${ml + pw / 2}" y="${H - 4}" text-anchor="middle">denoising step (of ${T})</text>`,
        `<text class="lv-tick" transform="translate(12 ${mt + ph / 2}) rotate(-90)" text-anchor="middle">loops S</text>`,
        `<text class="lv-tick" transform="translate(${W - 8} ${mt + ph / 2}) rotate(90)" text-anchor="middle">cumulative FLOPs</text>`);
      if (pts.length) {
        parts.push(`<polyline class="flops-line" points="${pts.map((p) => `${x(p.s)},${yf(p.flops)}`).join(" ")}"/>`,
          `<polyline class="loop-line" points="${pts.map((p) => `${x(p.s)},${yl(p.loops)}`).join(" ")}"/>`);
        const r = pts.length > 200 ? 1.8 : 3.2;
        for (const p of pts) {
          parts.push(`<circle class="loop-pt${p.s > this.view ? " lv-future" : ""}" data-step="${p.s}" cx="${x(p.s)}" cy="${yl(p.loops)}" r="${r}">` +
            `<title>step ${p.s}: S = ${p.loops}, ${fmtFlops(p.flops)} so far</title></circle>`);
        }
        if (this.view > 0) parts.push(`<line class="lv-cursor" x1="${x(this.view)}" x2="${x(this.view)}" y1="${mt}" y2="${mt + ph}"/>`);
      }
      parts.push(`<circle class="lv-keydot" cx="${ml + 6}" cy="12" r="4" fill="var(--accent)"/>`,
        `<text class="lv-key" x="${ml + 14}" y="16">loops S at each step</text>`,
        `<line x1="${ml + 160}" x2="${ml + 184}" y1="12" y2="12" class="flops-line"/>`,
        `<text class="lv-key" x="${ml + 190}" y="16">cumulative FLOPs</text>`, "</svg>");
      this.chart.innerHTML = "<h2>Loops per step and cumulative FLOPs</h2>" + parts.join("");
    }

    renderReport() {
      const r = this.report;
      this.reportPanel.innerHTML = "<h2>Compute report</h2>";
      if (!r) { this.reportPanel.append(el("div", "lv-empty", "—")); return; }
      const lps = r.loops_per_step || [];
      const mean = lps.length ? lps.reduce((a, b) => a + b, 0) / lps.length : null;
      const tokens = this.texts ? this.steps.length && this.steps[this.steps.length - 1].tokens.flat().length : 0;
      const rows = [["network calls", r.network_calls], ["loop iterations", r.loop_iterations],
        ["mean loops / step", mean === null ? "–" : mean.toFixed(2)]];
      if (typeof r.mean_loops === "number") rows.push(["mean S per position", r.mean_loops.toFixed(2)]);
      if (r.coda_calls) rows.push(["extra tail calls", r.coda_calls]);
      rows.push(["total FLOPs", fmtFlops(r.flops)],
        ["FLOPs / position", tokens ? fmtFlops(r.flops / tokens) : "–"],
        ["wall time", r.wall_time_s === null || r.wall_time_s === undefined ? "–" : r.wall_time_s.toFixed(3) + " s"]);
      const dl = el("dl", "lv-report");
      for (const [k, v] of rows) { const d = el("div"); d.append(el("dt", null, k), el("dd", null, String(v))); dl.append(d); }
      this.reportPanel.append(dl);
    }

    renderFinal() {
      this.finalPanel.innerHTML = "<h2>Final text</h2>";
      if (!this.texts) { this.finalPanel.append(el("div", "lv-empty", "—")); return; }
      this.texts.forEach((t, n) => { const p = el("pre", "final-text", t); p.dataset.sample = n; this.finalPanel.append(p); });
    }

    hover(ev) {
      const t = ev.target;
      if (!t.classList || !t.classList.contains("lv-tok")) return;
      const n = +t.dataset.n, i = +t.dataset.i, k = this.view;
      const snap = k > 0 ? this.steps[k - 1] : null;
      const rs = this.revealStep(n, i);
      const rows = [["position", i]];
      const masked = t.classList.contains("lv-mask");
      if (!masked && snap) {
        const id = snap.tokens[n][i];
        rows.unshift(["token", JSON.stringify(this.pieces.get(id) ?? "?") + ` (id ${id})`]);
      }
      if (rs === -1) rows.push(["source", "given by the prompt / template"]);
      else if (masked) rows.push(["status", rs > 0 ? `masked at this step (revealed at step ${rs})` : "still masked"]);
      else {
        rows.push(["revealed at", `step ${rs} of ${this.totalSteps}`]);
        if (this.traj) {
          rows.push(["confidence", (+this.traj.reveal_confidence[n][i]).toFixed(3)]);
          rows.push(["loops spent", this.traj.reveal_loops[n][i]]);
        } else if (this.steps[rs - 1]) rows.push(["loops at that step", this.steps[rs - 1].loops]);
      }
      this.tooltip.textContent = "";
      for (const [a, b] of rows) { const r = el("div", "lv-tt-row"); r.append(el("span", null, a), el("span", null, String(b))); this.tooltip.append(r); }
      this.tooltip.style.display = "block";
      this.moveTip(ev);
    }

    moveTip(ev) {
      if (this.tooltip.style.display !== "block") return;
      const w = this.tooltip.offsetWidth, h = this.tooltip.offsetHeight;
      let x = ev.clientX + 14, y = ev.clientY + 16;
      if (x + w > window.innerWidth - 8) x = ev.clientX - w - 14;
      if (y + h > window.innerHeight - 8) y = ev.clientY - h - 12;
      this.tooltip.style.left = x + "px"; this.tooltip.style.top = y + "px";
    }

    /* Render a whole recorded generation at once: {start, steps: [step events], done}. */
    load(data) {
      this.reset(data.start);
      this.follow = true;
      for (const s of data.steps) this.addStep(s);
      if (data.done) this.finish(data.done);
    }
  }

  window.LoopViewer = { Viewer, stepColor, fmtFlops };
})();
