/* XR-0 dashboard: draws the state the server pushes (server-sent events) into the page; read-only.
 * Every text from the state goes in through textContent (never innerHTML): reasons come from hospitals,
 * which may be hostile. Charts: plotly.js from the installed plotly package (Plotly.react updates in place). */
(function () {
  "use strict";
  var KIND = document.body.getAttribute("data-kind");
  var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf"];
  var state = null;
  var clockOffset = 0; // browser clock minus server clock, seconds
  var healthMetric = null;

  // ------------------------------------------------------------------------------------------ helpers
  function $(id) { return document.getElementById(id); }

  function h(tag, attrs) {
    var el = document.createElement(tag);
    attrs = attrs || {};
    Object.keys(attrs).forEach(function (k) {
      if (attrs[k] === null || attrs[k] === undefined) return;
      if (k === "cls") el.className = attrs[k];
      else if (k === "text") el.textContent = attrs[k];
      else el.setAttribute(k, attrs[k]);
    });
    for (var i = 2; i < arguments.length; i++) add(el, arguments[i]);
    return el;
  }

  function add(el, child) {
    if (child === null || child === undefined) return;
    if (Array.isArray(child)) { child.forEach(function (c) { add(el, c); }); return; }
    el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }

  function num(x, digits) {
    if (x === null || x === undefined || x === "") return "\u2013";
    if (typeof x !== "number") return String(x);
    if (digits !== undefined) return x.toFixed(digits);  // JSON writes 8.0 as 8: fixed digits keep columns alike
    if (Number.isInteger(x)) return String(x);
    var a = Math.abs(x);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return x.toExponential(2);
    return String(parseFloat(x.toPrecision(4)));
  }

  function duration(s) {
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  function when(t) { return t ? new Date(t * 1000).toLocaleString() : "\u2013"; }
  function serverNow() { return Date.now() / 1000 - clockOffset; }

  /* A table: headers [text or {text, cls}], rows [[cell]], cell = text | number | Node | {text, cls, title, data}. */
  function table(headers, rows, opts) {
    opts = opts || {};
    var thead = h("thead", {}, h("tr", {}, headers.map(function (x) {
      return typeof x === "object" ? h("th", {cls: x.cls, text: x.text}) : h("th", {text: x});
    })));
    var tbody = h("tbody");
    rows.forEach(function (row) {
      var tr = h("tr", row.attrs || {});
      (row.cells || row).forEach(function (c) {
        if (c instanceof Node) { tr.appendChild(h("td", {}, c)); return; }
        if (c !== null && typeof c === "object") {
          var td = h("td", {cls: c.cls, title: c.title});
          if (c.data !== undefined) td.setAttribute("data-value", c.data);
          if (c.node) td.appendChild(c.node); else td.textContent = c.text === undefined ? "" : c.text;
          tr.appendChild(td);
          return;
        }
        tr.appendChild(h("td", {text: typeof c === "number" ? num(c) : (c === null ? "\u2013" : c)}));
      });
      tbody.appendChild(tr);
    });
    return h("table", {id: opts.id}, thead, tbody);
  }

  function fill(id, node) { var el = $(id); if (el) el.replaceChildren(node); }
  function show(id, on) { var el = $(id); if (el) el.hidden = !on; }

  function plot(id, traces, layout) {
    var el = $(id);
    if (!el) return;
    if (!traces.length || typeof Plotly === "undefined") { el.hidden = true; return; }
    el.hidden = false;
    var base = {margin: {l: 55, r: 15, t: 36, b: 90}, font: {size: 11},
                legend: {orientation: "h", x: 0, y: -0.3, yanchor: "top"},
                autosize: true, hovermode: "closest"};
    Object.keys(layout).forEach(function (k) { base[k] = layout[k]; });
    Plotly.react(el, traces, base, {responsive: true, displaylogo: false,
                                    modeBarButtonsToRemove: ["sendDataToCloud", "lasso2d", "select2d"]});
  }

  function colour(names, name) { return PALETTE[names.indexOf(name) % PALETTE.length]; }

  function statusCell(s) {
    if (!s) return {text: "\u2013", cls: "cell"};
    var text = s.status + (s.reason ? ": " + s.reason : "");
    return {text: text, cls: "cell " + s.status, title: s.reason || s.status};
  }

  // ------------------------------------------------------------------------------------------ run page
  function skeletonRun() {
    $("main").replaceChildren(
      h("section", {id: "progress"},
        h("div", {cls: "big"}, "Round ", h("span", {id: "round-counter", text: "0"}), " of ",
          h("span", {id: "rounds-total", text: "?"}), " done"),
        h("div", {cls: "progress"}, h("div", {id: "progress-bar", style: "width:0%"})),
        h("div", {id: "doing"}), h("div", {id: "eta", cls: "note"}), h("div", {id: "last-event", cls: "note"}),
        h("div", {id: "checkpoint", cls: "note"}), h("ul", {id: "alerts", cls: "alerts"})),
      h("section", {id: "hospitals"}, h("h2", {text: "Hospitals"}),
        h("p", {cls: "note", id: "hospitals-note"}), h("div", {cls: "scroll", id: "hospitals-table"})),
      h("section", {id: "rounds"}, h("h2", {text: "Rounds (newest first)"}),
        h("div", {cls: "scroll tall", id: "rounds-table"}), h("p", {cls: "note", id: "rounds-note"})),
      h("section", {id: "curves"}, h("h2", {text: "Learning and privacy"}),
        h("div", {cls: "charts"}, h("div", {id: "plot-loss", cls: "chart"}), h("div", {id: "plot-epsilon", cls: "chart"}),
          h("div", {id: "plot-health-box"},
            h("label", {cls: "note"}, "SSL health measurement: ", h("select", {id: "health-metric"})),
            h("div", {id: "plot-health", cls: "chart"}))),
        h("p", {cls: "note", id: "curves-note"})),
      h("section", {id: "health"}, h("h2", {}, "SSL health: ", h("span", {id: "health-status"})),
        h("div", {cls: "scroll", id: "health-table"})),
      h("section", {id: "evaluation"}, h("h2", {text: "Evaluation (frozen backbone, pretrained vs random init)"}),
        h("div", {id: "evaluation-body"})),
      h("section", {id: "secagg"}, h("h2", {text: "Secure aggregation"}), h("div", {cls: "scroll", id: "secagg-table"})),
      h("section", {id: "configuration"}, h("h2", {text: "Configuration"}),
        h("details", {id: "config-details"}, h("summary", {id: "config-summary", text: "run config"}),
          h("pre", {id: "config-pre"}))));
    $("health-metric").addEventListener("change", function (e) { healthMetric = e.target.value; if (state) renderRun(state); });
  }

  function renderRun(st) {
    var p = st.progress;
    document.title = st.title + " \u2013 " + p.status;
    $("title").textContent = st.title + (st.run_key ? " (run " + st.run_key + ")" : "");
    var badge = $("status");
    badge.textContent = p.status;
    badge.className = "badge " + p.status;
    badge.title = p.status_text;
    $("mode").textContent = st.mode.length ? st.mode.join(", ") : "no DP, plain aggregation";
    $("round-counter").textContent = String(p.rounds_done);
    $("rounds-total").textContent = p.rounds_total ? String(p.rounds_total) : "?";
    $("progress-bar").style.width = (p.rounds_total ? Math.min(100, 100 * p.rounds_done / p.rounds_total) : 0) + "%";
    var doing = p.status === "running" ? p.doing : p.status_text + (p.reason ? ": " + p.reason : "");
    $("doing").textContent = doing;
    $("doing").className = (p.status === "stopped" || p.status === "crashed") ? "alert" : "";
    $("checkpoint").textContent = st.checkpoint_round ? "latest checkpoint: round " + st.checkpoint_round : "";
    var alerts = $("alerts");
    alerts.replaceChildren();
    st.alerts.forEach(function (a) { alerts.appendChild(h("li", {text: a})); });
    renderClock();
    renderHospitals(st);
    renderGrid(st);
    renderCurves(st);
    renderHealth(st);
    renderEvaluations(st);
    renderSecagg(st);
    var keys = Object.keys(st.config).sort();
    $("config-summary").textContent = keys.length + " keys (flat run config; config hash in checkpoints/)";
    $("config-pre").textContent = keys.map(function (k) { return k + " = " + JSON.stringify(st.config[k]); }).join("\n");
    show("configuration", keys.length > 0);
  }

  function renderClock() {
    if (!state) return;
    var now = serverNow();
    if (KIND === "run") {
      var p = state.progress;
      $("eta").textContent = (p.status === "running" && p.eta_at)
        ? "ETA of the last round: " + (p.eta_at > now ? "in " + duration(p.eta_at - now) : "any moment now")
          + " (mean time per round of this run so far)" : "";
      $("last-event").textContent = p.last_event
        ? "last event from the coordinator " + duration(now - p.last_event) + " ago (" + when(p.last_event) + ")"
          + (p.started ? "; this run started " + when(p.started) : "") : "";
    }
  }

  function renderHospitals(st) {
    var rows = st.hospitals;
    var anyEps = rows.some(function (r) { return r.epsilon !== null || r.epsilon_withheld; });
    var anyLedger = rows.some(function (r) { return r.ledger_epsilon !== null && r.ledger_epsilon !== undefined; });
    var anySec = rows.some(function (r) { return r.secagg; });
    var anyImages = rows.some(function (r) { return r.images !== null && r.images !== undefined; });
    var head = ["hospital"].concat(anyImages ? ["images"] : [], ["now", "train rounds", {text: "last problem (reason as the hospital gave it)", cls: "text"}]);
    if (anyEps) head = head.concat(["\u03b5 this run", "run cap", "\u03b5 released (all runs)", "budget", "budget left"]);
    if (anyLedger) head.push("\u03b5 in its ledger");
    if (anySec) head.push("secure aggregation");
    head.push("evaluation");
    var out = rows.map(function (r) {
      var counts = Object.keys(r.train).sort().map(function (k) { return r.train[k] + " " + k; }).join(", ");
      var now = r.last ? statusCell({status: r.last.status, reason: ""}) : {text: "\u2013"};
      if (r.last) now.text = r.last.status + " (" + r.last.kind + " " + r.last.round + ")";
      var prob = r.problem
        ? {text: r.problem.kind + " round " + r.problem.round + ", " + r.problem.status + ": " + r.problem.reason,
           cls: "reason " + r.problem.status}
        : {text: "none", cls: "reason ok"};
      var cells = [{text: r.name, cls: "text"}].concat(anyImages ? [r.images === null || r.images === undefined ? "\u2013" : r.images] : [],
                                                       [now, counts || "\u2013", prob]);
      if (anyEps) {
        if (r.epsilon_withheld && r.epsilon === null) {
          cells.push("\u2013", "\u2013", {text: "withheld by its policy", cls: "eps", data: ""}, "\u2013", "\u2013");
        } else {
          cells.push({text: num(r.epsilon_run, 4), cls: "eps-run", data: r.epsilon_run === null ? "" : String(r.epsilon_run)},
                     r.run_cap === null ? "\u2013" : (r.run_cap === "all" ? "all" : num(r.run_cap)),
                     {text: num(r.epsilon, 4), cls: "eps", data: r.epsilon === null ? "" : String(r.epsilon),
                      title: r.epsilon_round ? "released with its round " + r.epsilon_round + " reply, at \u03b4 = " + num(r.delta) : ""},
                     r.budget, {text: num(r.budget_left, 4), cls: "budget-left"});
        }
      }
      if (anyLedger) cells.push({text: num(r.ledger_epsilon, 4), cls: "ledger-eps",
                                 data: r.ledger_epsilon === null || r.ledger_epsilon === undefined ? "" : String(r.ledger_epsilon)});
      if (anySec) cells.push(r.secagg ? r.secagg.counted + " of " + r.secagg.rounds + " masked rounds" : "\u2013");
      cells.push(r.evaluation ? statusCell({status: r.evaluation.status, reason: r.evaluation.reason}) : "\u2013");
      return {attrs: {"data-site": r.name}, cells: cells};
    });
    fill("hospitals-table", rows.length ? table(head, out, {id: "hospitals-grid"}) : h("p", {cls: "note", text: "no hospital has answered yet"}));
    $("hospitals-note").textContent = anyEps
      ? "\u03b5 as each hospital released it with its last train reply, at its own \u03b4 and as its policy lets it leave "
        + "(rounded up to 0.1 unless the policy says exact): this run's spend (resumes included) against its per-run cap, "
        + "and its spend over every run against its lifetime budget." + (anyLedger ? " \u03b5 in its ledger: read from each simulated "
        + "hospital's own ledger at the end of the simulation." : "")
      : "";
  }

  function renderGrid(st) {
    var g = st.grid;
    var head = ["round", "kind", "ok", "seconds", {text: "note", cls: "text"}].concat(g.hospitals);
    var rows = g.rows.map(function (r) {
      return {attrs: {"data-round": r.round, "data-kind": r.kind},
              cells: [r.round, r.kind, r.ok + "/" + r.n, r.seconds === null ? "\u2013" : num(r.seconds, 1),
                      {text: r.note, cls: "reason" + (r.kind === "train" && !r.updated ? " failed" : "")}]
                .concat(r.cells.map(statusCell))};
    });
    fill("rounds-table", g.rows.length ? table(head, rows, {id: "rounds-grid"}) : h("p", {cls: "note", text: "no round finished yet"}));
    $("rounds-note").textContent = g.hidden ? g.hidden + " older rounds are in report.html and metrics.json" : "";
  }

  function renderCurves(st) {
    var s = st.series, names = st.hospitals.map(function (r) { return r.name; });
    var loss = Object.keys(s.loss).sort().map(function (n) {
      return {x: s.loss[n].x, y: s.loss[n].y, name: n, mode: s.loss[n].x.length < 40 ? "lines+markers" : "lines",
              line: {color: colour(names, n)}, type: "scatter"};
    });
    if (s.loss_aggregate.x.length) loss.push({x: s.loss_aggregate.x, y: s.loss_aggregate.y, name: "aggregate (per round)",
                                               mode: "lines+markers", line: {dash: "dot", color: "#333"}, type: "scatter"});
    plot("plot-loss", loss, {title: {text: "local SSL loss"}, xaxis: {title: {text: "global step"}},
                             yaxis: {title: {text: "loss"}}});
    var eps = [];
    Object.keys(s.epsilon).sort().forEach(function (n) {
      var e = s.epsilon[n];
      eps.push({x: e.x, y: e.y, name: n, mode: "lines+markers", line: {color: colour(names, n)}, type: "scatter"});
      if (e.budget !== null) eps.push({x: [Math.min.apply(null, e.x), Math.max.apply(null, e.x)], y: [e.budget, e.budget],
                                       name: n + " budget", mode: "lines", showlegend: false, hoverinfo: "name+y",
                                       line: {color: colour(names, n), dash: "dash", width: 1}, type: "scatter"});
    });
    plot("plot-epsilon", eps, {title: {text: "\u03b5 released per hospital (dashed: budget)"},
                               xaxis: {title: {text: "round"}, dtick: 1}, yaxis: {title: {text: "\u03b5"}, rangemode: "tozero"}});
    var order = ["rankme-cls", "knn-probe", "teacher-entropy", "feature-std"];  // run_view.HEALTH_SERIES
    var metrics = order.filter(function (m) { return s.health[m]; });
    var sel = $("health-metric");
    if (sel.options.length !== metrics.length) {
      sel.replaceChildren.apply(sel, metrics.map(function (m) { return h("option", {value: m, text: m}); }));
    }
    if (metrics.indexOf(healthMetric) < 0) healthMetric = metrics[0] || null;
    if (healthMetric) sel.value = healthMetric;
    show("plot-health-box", metrics.length > 0);
    var health = healthMetric ? Object.keys(s.health[healthMetric]).sort().map(function (n) {
      var v = s.health[healthMetric][n];
      return {x: v.x, y: v.y, name: n, mode: "lines+markers", line: {color: colour(names, n)}, type: "scatter"};
    }) : [];
    if (metrics.length) plot("plot-health", health, {title: {text: "SSL health: " + healthMetric},
                                                     xaxis: {title: {text: "round"}, dtick: 1}});
    var notes = [];
    if (!loss.length && eps.length) notes.push("no loss curve: under DP the losses stay at each hospital (docs/privacy.md)");
    if (!loss.length && !eps.length) notes.push("curves appear after the first round");
    $("curves-note").textContent = notes.join("; ");
  }

  function renderHealth(st) {
    var sites = st.health.sites;
    show("health", sites.length > 0);
    if (!sites.length) return;
    $("health-status").textContent = st.health.status;
    var cols = ["rankme-cls", "rankme-patch", "feature-std", "teacher-entropy", "prototype-usage", "knn-probe",
                "feature-change"];
    fill("health-table", table(["hospital", "status"].concat(cols, [{text: "reasons", cls: "text"}]), sites.map(function (s) {
      return [{text: s.name, cls: "text"}, {text: s.status, cls: s.status === "ok" ? "ok" : "failed"}]
        .concat(cols.map(function (c) { return s.last[c] === undefined ? "\u2013" : num(s.last[c]); }),
                [{text: s.reasons.join("; "), cls: "reason"}]);
    })));
  }

  function interval(r) {
    if (r.diff === null) return "\u2013";
    var d = (r.diff >= 0 ? "+" : "") + num(r.diff, 3);
    return r.low === null ? d : d + " [" + num(r.low, 3) + ", " + num(r.high, 3) + "]";
  }

  function renderEvaluations(st) {
    var body = $("evaluation-body");
    body.replaceChildren();
    show("evaluation", st.evaluations.length > 0);
    st.evaluations.forEach(function (ev, i) {
      var status = ev.sites.map(function (s) { return s.name + " " + s.status + (s.reason && s.status !== "empty" ? " (" + s.reason + ")" : ""); }).join(", ");
      var inner = [h("p", {cls: "note", text: "hospitals: " + status})];
      if (ev.rows.length) {
        inner.push(h("div", {cls: "scroll"}, table(["family", "task", "metric", "pretrained", "random init",
          "difference [95 % interval]", "verdict", "sites", "units"], ev.rows.map(function (r) {
          var badge = {better: "better", worse: "worse"}[r.verdict] || "unclear";
          return [{text: r.family, cls: "text"}, {text: r.task, cls: "text"}, {text: r.metric, cls: "text"},
                  r.pretrained, r.random, interval(r), {text: r.verdict, cls: badge}, r.hospitals, r.units];
        }))));
      } else {
        inner.push(h("p", {cls: "note", text: "no hospital returned downstream numbers in this evaluation"}));
      }
      var title = "after round " + ev.round;
      if (i === 0) { body.appendChild(h("h3", {text: title})); add(body, inner); }
      else body.appendChild(h("details", {}, h("summary", {text: title}), inner));
    });
    if (st.evaluations.length) body.appendChild(h("p", {cls: "note", text: "difference: pretrained minus random init, "
      + "95 % interval from paired bootstraps over patients at each hospital, pooled across hospitals; 'better' / "
      + "'worse' only when the whole interval is on one side of 0 (docs/evaluation.md)"}));
  }

  function renderSecagg(st) {
    show("secagg", st.secagg.length > 0);
    if (!st.secagg.length) return;
    fill("secagg-table", table(["round", "masked uploads", "dropped", "threshold", "clipped coordinates", "error bound",
                                "skipped", {text: "note", cls: "text"}], st.secagg.map(function (r) {
      return [r.round, r["secagg-uploads"], r["secagg-dropped"], r["secagg-threshold"], r["secagg-clipped"],
              r["secagg-error-bound"], r["secagg-skipped"] ? "yes" : "no", {text: r.note, cls: "reason"}];
    })));
  }

  // ------------------------------------------------------------------------------------------ site page
  function skeletonSite() {
    $("main").replaceChildren(
      h("section", {id: "budget"}, h("h2", {text: "Privacy budget"}),
        h("div", {cls: "big"}, "\u03b5 spent ", h("span", {id: "epsilon", text: "\u2013"}), " of budget ",
          h("span", {id: "budget-value", text: "\u2013"}), ", left ", h("span", {id: "budget-left", text: "\u2013"})),
        h("div", {cls: "progress", id: "budget-progress"}, h("div", {id: "budget-bar", style: "width:0%"})),
        h("dl", {cls: "kv", id: "privacy-facts"}), h("p", {id: "privacy-error", cls: "alert"})),
      h("section", {id: "epsilon-time"}, h("h2", {text: "\u03b5 over time"}), h("div", {id: "plot-eps-time", cls: "chart"}),
        h("p", {cls: "note", id: "eps-time-note"})),
      h("section", {id: "runs"}, h("h2", {text: "Runs"}), h("div", {cls: "scroll", id: "runs-table"})),
      h("section", {id: "refusals"}, h("h2", {text: "Refusals"}), h("p", {cls: "note", id: "refusals-note"}),
        h("div", {cls: "scroll tall", id: "refusals-table"})),
      h("section", {id: "releases"}, h("h2", {text: "Releases (newest first)"}), h("div", {cls: "scroll tall", id: "releases-table"})),
      h("section", {id: "policy"}, h("h2", {text: "Policy in force"}), h("dl", {cls: "kv", id: "policy-facts"}),
        h("details", {id: "policy-details"}, h("summary", {id: "policy-summary", text: "policy.toml"}), h("pre", {id: "policy-pre"}))),
      h("section", {id: "audit"}, h("h2", {text: "Audit log: every message that left this hospital"}),
        h("p", {cls: "note", id: "audit-summary"}), h("div", {cls: "scroll tall", id: "audit-table"})));
  }

  function facts(id, pairs) {
    var dl = $(id);
    dl.replaceChildren();
    pairs.forEach(function (p) { dl.appendChild(h("dt", {text: p[0]})); dl.appendChild(h("dd", {text: p[1]})); });
  }

  function bytes(n) {
    if (n < 1024) return n + " B";
    if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
    if (n < 1073741824) return (n / 1048576).toFixed(1) + " MiB";
    return (n / 1073741824).toFixed(2) + " GiB";
  }

  function carried(c) {
    return c.map(function (r) {
      if (r.kind === "arrays") return r.count + " arrays (" + bytes(r.bytes) + ")";
      if (r.values) return r.record + ": " + Object.keys(r.values).sort().map(function (k) { return k + "=" + num(r.values[k]); }).join(", ");
      return r.count + " " + r.kind + " values";
    }).join("; ");
  }

  function renderSite(st) {
    document.title = st.title;
    $("title").textContent = st.title;
    $("status").textContent = "hospital";
    $("status").className = "badge completed";
    $("mode").textContent = "state folder " + st.site.state_dir + (st.site.site_id ? ", site id " + st.site.site_id : "");
    var err = st.error || "";
    $("privacy-error").textContent = err;
    if (st.privacy) {
      var pv = st.privacy;
      var e = $("epsilon");
      e.textContent = num(pv.epsilon, 4);
      e.setAttribute("data-value", String(pv.epsilon));
      $("budget-value").textContent = pv.budget === null ? "none set" : num(pv.budget);
      $("budget-left").textContent = st.budget_left === null ? "\u2013"
        : (st.budget_left < 0 ? "none (over by " + num(-st.budget_left, 4) + ")" : num(st.budget_left, 4));
      var frac = pv.budget ? Math.min(1, pv.epsilon / pv.budget) : 0;
      $("budget-bar").style.width = (100 * frac) + "%";
      $("budget-progress").className = "progress" + (frac >= 0.99 ? " spent" : "");
      facts("privacy-facts", [["\u03b4", num(pv.delta)], ["accountant", pv.accountant], ["privacy unit", pv.unit || "\u2013"],
        ["DP required by the policy", st.dp_required ? "yes" : "no"],
        ["per-run cap", st.run_cap === "all" ? "all (one run may spend what is left)" : (st.run_cap ? num(st.run_cap) : "not set")],
        ["releases", String(pv.releases_total)],
        ["\u03b5 leaves this hospital", st.policy ? st.policy.epsilon_release : "\u2013"]]);
      var c = st.curve;
      var labelled = c.time.every(function (t) { return t; });
      plot("plot-eps-time", c.epsilon.length ? [{x: labelled ? c.time.map(function (t) { return new Date(t * 1000); }) : c.epsilon.map(function (_, i) { return i + 1; }),
        y: c.epsilon, text: c.label, mode: "lines+markers", name: "\u03b5", type: "scatter", line: {shape: "hv"}}].concat(
        pv.budget !== null && c.epsilon.length ? [{x: labelled ? [new Date(c.time[0] * 1000), new Date(c.time[c.time.length - 1] * 1000)] : [1, c.epsilon.length],
          y: [pv.budget, pv.budget], mode: "lines", name: "budget", line: {dash: "dash", color: "#b71c1c"}, type: "scatter"}] : []) : [],
        {title: {text: "\u03b5 spent after each release"}, xaxis: {title: {text: labelled ? "time" : "release"}},
         yaxis: {title: {text: "\u03b5"}, rangemode: "tozero"}});
      $("eps-time-note").textContent = c.epsilon.length ? "each point: \u03b5 of every release up to it, composed by the accountant at the policy's \u03b4 (pending releases count in full)" : "no release yet: this hospital has not trained under differential privacy";
      fill("runs-table", st.runs.length ? table(["run", "releases", "rounds", "pending", "withdrawn", "first", "last", "\u03b5 of this run's releases alone"],
        st.runs.map(function (r) {
          return [{text: r.run_id, cls: "text"}, r.releases, r.rounds.length > 6 ? r.rounds[0] + "\u2013" + r.rounds[r.rounds.length - 1] : r.rounds.join(", "),
                  r.pending, r.withdrawn, when(r.first), when(r.last), {text: num(r.epsilon, 4), data: String(r.epsilon)}];
        })) : h("p", {cls: "note", text: "no run has released anything here"}));
      fill("releases-table", pv.releases.length ? table(["time", "run", "round", "kind", "unit", "\u03c3", "q", "steps", "\u03b4", "status"],
        pv.releases.map(function (r) {
          return [when(r.time), {text: r.run_id, cls: "text"}, r.round, r.kind, r.unit, num(r.noise_multiplier, 4), r.sample_rate, r.steps, r.delta, r.status];
        })) : h("p", {cls: "note", text: "no releases"}));
    }
    if (st.policy) {
      facts("policy-facts", [["file", st.policy.file || "none (defaults)"], ["note", st.policy.note || "\u2013"],
        ["secure aggregation required", st.policy.secagg_required ? "yes" : "no"],
        ["pinned peer keys", String(st.policy.pinned_peers)]]);
      $("policy-pre").textContent = st.policy.toml;
      $("policy-summary").textContent = st.policy.file || "policy (defaults)";
    }
    var a = st.audit;
    var types = Object.keys(a.by_type).sort().map(function (k) { return a.by_type[k] + " " + k; }).join(", ");
    $("audit-summary").textContent = a.count + " messages left this hospital" + (types ? " (" + types + ")" : "")
      + ", " + bytes(a.array_bytes) + " of weights in all; the newest " + a.recent.length + " below (audit.jsonl has every one)"
      + (a.bad_lines ? "; " + a.bad_lines + " unreadable lines skipped" : "");
    fill("audit-table", a.recent.length ? table(["time (UTC)", "message", "Flower run", {text: "error", cls: "text"}, {text: "what it carried", cls: "text"}],
      a.recent.map(function (r) {
        return [r.time, r.message_type, String(r.run_id), {text: r.error || "", cls: "reason" + (r.error ? " failed" : "")},
                {text: carried(r.carried), cls: "reason"}];
      })) : h("p", {cls: "note", text: "nothing has left this hospital yet"}));
    $("refusals-note").textContent = st.refusals.length
      ? "replies that carried an error instead of weights or metrics: a refusal by the policy, a spent budget, or a failure (reasons as sent)"
      : "no refusal: every reply so far carried what was asked";
    fill("refusals-table", st.refusals.length ? table(["time (UTC)", "message", "Flower run", {text: "reason sent", cls: "text"}],
      st.refusals.map(function (r) { return [r.time, r.message_type, String(r.run_id), {text: r.error, cls: "reason failed"}]; }))
      : h("span"));
  }

  // ------------------------------------------------------------------------------------------ wiring
  function render(st) {
    state = st;
    try {
      if (KIND === "run") renderRun(st); else renderSite(st);
    } catch (err) {
      if (window.console) console.error("dashboard render failed", err);
      throw err;
    }
  }

  function setConn(text, cls) { var c = $("conn"); c.textContent = text; c.className = "conn " + cls; }

  function start() {
    if (KIND === "run") skeletonRun(); else skeletonSite();
    var es = new EventSource("api/events");
    es.addEventListener("state", function (e) {
      var m = JSON.parse(e.data);
      clockOffset = Date.now() / 1000 - m.now;
      render(m.state);
      setConn("live, updated " + new Date().toLocaleTimeString(), "live");
    });
    es.addEventListener("tick", function (e) { clockOffset = Date.now() / 1000 - JSON.parse(e.data).now; });
    es.onerror = function () {
      setConn("disconnected: the dashboard process stopped or the network dropped; retrying (the page keeps the last state)", "down");
    };
    setInterval(renderClock, 1000);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
