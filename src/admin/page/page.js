// firedrill's live status page: renders what GET /stream pushes (the
// status every second, engine events as they happen) and calls the admin
// API for its buttons. A token the API asks for is kept in this page's
// memory only, never stored.
"use strict";
(() => {
  const POINTS = 300; // five minutes of one-second updates per chart
  const STALE_AFTER = 5000; // ms without a status before the page says so
  let token = null;
  let skew = 0; // server clock minus this one, in ms, from each status
  let lastStatus = 0;
  let source = null;
  const tiles = new Map(); // data center name -> its tile's parts
  const live = []; // engine events since the stream opened, newest first
  let history = []; // timeline entries from GET /events

  const $ = (id) => document.getElementById(id);
  // The API's paths sit beside the page. Resolved without the page's own
  // URL, which may carry credentials (http://user:token@host/) that a
  // browser refuses on the page's requests; it sends what it cached.
  const base = location.origin + location.pathname;
  const url = (path) => new URL(path, base).href;

  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value !== undefined && value !== null) node.setAttribute(name, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const rate = (x) => (x >= 100 ? x.toFixed(0) : x.toFixed(1)) + "/s";
  const ratio = (r) => (r === null || r === undefined ? "–" : (r * 100).toFixed(r > 0 && r < 0.01 ? 2 : 1) + " %");
  const seconds = (s) =>
    s === null || s === undefined ? "–" : s < 1 ? (s * 1000).toFixed(s < 0.01 ? 1 : 0) + " ms" : s.toFixed(2) + " s";
  const clock = (text) => new Date(text).toLocaleTimeString();

  function say(text, error) {
    const message = $("message");
    message.textContent = text;
    message.className = error ? "error" : "";
  }

  // --- The admin API, asking for a token when it wants one -----------------

  async function call(method, path, body) {
    for (;;) {
      const headers = { "content-type": "application/json" };
      if (token) headers.authorization = "Bearer " + token;
      const response = await fetch(url(path), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "same-origin",
      });
      let answer = {};
      try {
        answer = await response.json();
      } catch (_) {
        // An empty or non-JSON answer: the status says enough.
      }
      if (response.status === 401 || response.status === 403) {
        const given = window.prompt((answer.error || "This needs a token.") + "\nToken from [admin] tokens:");
        if (given === null || given.trim() === "") throw new Error(answer.error || "a token is needed");
        token = given.trim();
        continue;
      }
      if (!response.ok) throw new Error(answer.error || response.status + " " + response.statusText);
      return answer;
    }
  }

  async function act(what, method, path, body) {
    try {
      const answer = await call(method, path, body);
      say(what(answer));
    } catch (error) {
      say(error.message, true);
    }
  }

  $("trigger").addEventListener("submit", (event) => {
    event.preventDefault();
    const scenario = $("scenario").value;
    if (!scenario) return;
    const duration = $("duration").value.trim();
    const body = duration ? { duration } : undefined;
    act((a) => `${a.scenario}: ${a.status}, until ${clock(a.expires_at)}`, "POST", "faults/" + encodeURIComponent(scenario), body);
  });

  $("halt").addEventListener("click", () => {
    if (!window.confirm("Lift every active scenario now?")) return;
    act((a) => (a.lifted.length ? "halted: " + a.lifted.join(", ") : "nothing was active"), "DELETE", "faults");
  });

  function lift(scenario) {
    act((a) => (a.lifted ? `${a.scenario} lifted` : `${a.scenario} was not active`), "DELETE", "faults/" + encodeURIComponent(scenario));
  }

  async function loadScenarios() {
    try {
      const list = await call("GET", "scenarios");
      const select = $("scenario");
      select.replaceChildren(...list.scenarios.map((s) => el("option", { value: s.name, title: s.description }, s.name)));
    } catch (error) {
      say("cannot list scenarios: " + error.message, true);
    }
  }

  // --- Tiles and charts -----------------------------------------------------

  const axis = { stroke: "#8b95a3", grid: { stroke: "#262c35" }, ticks: { stroke: "#262c35" }, font: "10px system-ui" };
  const time = (t) => new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });

  function chart(label, range, format, color) {
    const holder = el("div", { class: "chart" }, el("div", { class: "label" }, label));
    const data = [[], []];
    const plot = new uPlot(
      {
        width: 300,
        height: 100,
        legend: { show: false },
        cursor: { show: false },
        scales: { x: { time: true }, y: { range } },
        axes: [
          { ...axis, size: 24, space: 70, values: (u, ticks) => ticks.map(time) },
          { ...axis, size: 46, space: 20, values: (u, ticks) => ticks.map(format) },
        ],
        series: [{}, { stroke: color, fill: color + "33", width: 2, points: { show: false } }],
      },
      data,
      holder,
    );
    return {
      holder,
      push(at, value) {
        data[0].push(at);
        data[1].push(value);
        if (data[0].length > POINTS) {
          data[0].shift();
          data[1].shift();
        }
        plot.setData(data);
      },
    };
  }

  function tile(dc) {
    const state = el("span", { class: "state" });
    const numbers = el("div", { class: "numbers" });
    const services = el("ul", { class: "services" });
    const requests = chart("requests per second", (u, min, max) => [0, Math.max(1, max * 1.2)], (v) => v.toFixed(0), "#4aa3df");
    const errors = chart("error ratio", [0, 1], (v) => (v * 100).toFixed(0) + "%", "#e74c3c");
    const node = el(
      "article",
      { class: "dc", "data-datacenter": dc.name, "data-state": dc.state },
      el("h3", {}, dc.name, state),
      el("p", { class: "description" }, dc.description),
      numbers,
      services,
      requests.holder,
      errors.holder,
    );
    $("datacenters").append(node);
    return { node, state, numbers, services, requests, errors };
  }

  function number(label, value) {
    return el("div", {}, el("span", {}, label), value);
  }

  function renderTiles(status) {
    const at = Date.parse(status.at) / 1000;
    const seen = new Set();
    for (const dc of status.datacenters) {
      seen.add(dc.name);
      let parts = tiles.get(dc.name);
      if (!parts) {
        parts = tile(dc);
        tiles.set(dc.name, parts);
      }
      parts.node.dataset.state = dc.state;
      parts.node.dataset.errorRatio = dc.error_ratio === null ? "" : dc.error_ratio;
      parts.state.textContent = dc.state;
      parts.numbers.replaceChildren(
        number("requests", rate(dc.requests_per_second)),
        number("errors", ratio(dc.error_ratio)),
        number("p99", seconds(dc.p99_seconds)),
      );
      parts.services.replaceChildren(
        ...dc.services.map((s) => {
          const faults = s.faults.map((f) => `${f.action} (${f.scenario})`).join(", ");
          const title = `${s.name} (${s.protocol}): ${s.state}; ${rate(s.requests_per_second)}, errors ${ratio(s.error_ratio)}, p99 ${seconds(s.p99_seconds)}, ${s.connections_open} open` + (faults ? "; faults: " + faults : "");
          return el("li", { "data-service": s.name, "data-state": s.state, title }, s.name);
        }),
      );
      parts.requests.push(at, dc.requests_per_second);
      parts.errors.push(at, dc.error_ratio === null ? null : dc.error_ratio);
    }
    for (const [name, parts] of tiles) {
      if (!seen.has(name)) {
        parts.node.remove();
        tiles.delete(name);
      }
    }
  }

  // --- Active scenarios with a countdown and their guards -------------------

  function renderActive(active) {
    const holder = $("active");
    if (!active.length) {
      holder.replaceChildren(el("p", { class: "none" }, "None: everything runs as usual."));
      return;
    }
    holder.replaceChildren(
      ...active.map((a) => {
        const button = el("button", { type: "button" }, "Lift");
        button.addEventListener("click", () => lift(a.scenario));
        const faults = a.faults.map((f) =>
          el("li", { "data-state": f.state }, `${f.action} on ${f.services.join(", ") || "nothing running"}: ${f.state}`),
        );
        const guards = (a.guards || []).map((g) => {
          const value = g.value === null ? "no reading" : g.value.toFixed(3);
          const held = g.pending_for ? `, held ${g.pending_for} of ${g.for}` : "";
          return el("li", { class: "guard", "data-guard": g.name, "data-state": g.state, title: g.detail }, `${g.name}: ${g.state} (${value}, above ${g.above}${held})`);
        });
        return el(
          "article",
          { class: "activation", "data-scenario": a.scenario },
          el("h3", {}, a.scenario, el("span", { class: "countdown", "data-expires": a.expires_at }, countdown(a.expires_at)), button),
          el("p", { class: "by" }, `${a.description ? a.description + " · " : ""}by ${a.activated_by}, since ${clock(a.started_at)}`),
          el("ul", {}, ...faults),
          guards.length ? el("ul", { class: "guards" }, ...guards) : null,
        );
      }),
    );
  }

  function countdown(expires) {
    const left = Math.max(0, Math.round((Date.parse(expires) - (Date.now() + skew)) / 1000));
    const minutes = Math.floor(left / 60);
    const rest = String(left % 60).padStart(2, "0");
    return minutes >= 60 ? `${Math.floor(minutes / 60)}h ${String(minutes % 60).padStart(2, "0")}:${rest}` : `${minutes}:${rest}`;
  }

  // --- The event timeline -----------------------------------------------------

  async function loadHistory() {
    try {
      const list = await call("GET", "events");
      history = [];
      for (const r of list.events) {
        history.push({ at: r.started_at, text: `${r.scenario} activated by ${r.activated_by}` });
        if (r.ended_at) {
          const by = r.stopped_by ? `guard ${r.stopped_by.guard}` : r.ended_by;
          history.push({ at: r.ended_at, text: `${r.scenario} ${r.ended}` + (by ? ` by ${by}` : "") });
        }
      }
      renderTimeline();
    } catch (error) {
      say("cannot read the events: " + error.message, true);
    }
  }

  function renderTimeline() {
    const known = new Set(live.map((e) => e.at + e.text));
    const entries = live
      .filter((e) => e.kind !== "stage_started" && e.kind !== "stage_ended")
      .map((e) => ({ at: e.at, text: e.text, kind: e.kind }))
      .concat(history.filter((e) => !known.has(e.at + e.text)));
    entries.sort((a, b) => Date.parse(b.at) - Date.parse(a.at));
    $("timeline").replaceChildren(
      ...entries.slice(0, 100).map((e) => el("li", { "data-kind": e.kind }, el("time", { datetime: e.at }, clock(e.at)), e.text)),
    );
  }

  // --- The stream -------------------------------------------------------------

  function connection(state, text) {
    const node = $("connection");
    node.dataset.state = state;
    node.textContent = text;
  }

  function connect() {
    if (source) source.close();
    connection("connecting", "connecting…");
    source = new EventSource(url("stream"));
    let opened = false;
    source.addEventListener("status", (message) => {
      const status = JSON.parse(message.data);
      lastStatus = Date.now();
      skew = Date.parse(status.at) - Date.now();
      connection("live", "live");
      $("window").textContent = `rates over the last ${status.window}`;
      renderTiles(status);
      renderActive(status.active);
      if (!opened) {
        opened = true;
        loadHistory();
        loadScenarios();
      }
    });
    source.addEventListener("engine", (message) => {
      live.unshift(JSON.parse(message.data));
      live.length = Math.min(live.length, 200);
      renderTimeline();
    });
    source.onerror = () => {
      // The browser retries by itself after a dropped stream; it gives up
      // on an answer that is not a stream (401, say), so try again later.
      if (source.readyState === EventSource.CLOSED) {
        connection("closed", "disconnected, retrying…");
        setTimeout(connect, 3000);
      } else {
        connection("connecting", "reconnecting…");
      }
    };
  }

  setInterval(() => {
    for (const node of document.querySelectorAll(".countdown")) node.textContent = countdown(node.dataset.expires);
    if (lastStatus && Date.now() - lastStatus > STALE_AFTER && $("connection").dataset.state === "live") {
      connection("stale", "no update for " + Math.round((Date.now() - lastStatus) / 1000) + " s");
    }
  }, 500);

  connect();
})();
