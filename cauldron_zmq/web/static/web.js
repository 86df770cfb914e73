// cauldron-zmq web: keeps the server-rendered pages live.
// Values are always set with textContent, never as HTML.
(function () {
  "use strict";

  var CHART_POINTS = 120;

  function setText(el, text) {
    if (el) { el.textContent = text === null || text === undefined ? "" : String(text); }
  }

  function connection(text, ok) {
    var el = document.getElementById("connection");
    if (!el) { return; }
    setText(el, text);
    el.className = "connection " + (ok ? "ok" : "lost");
  }

  // The first element carrying attr="name", looked up once (pages have many keywords).
  var index = {};
  function byAttr(attr, name) {
    var map = index[attr];
    if (!map) {
      map = index[attr] = {};
      var all = document.querySelectorAll("[" + attr + "]");
      for (var i = all.length - 1; i >= 0; i--) { map[all[i].getAttribute(attr)] = all[i]; }
    }
    return Object.prototype.hasOwnProperty.call(map, name) ? map[name] : null;
  }

  function clock(stamp) {
    if (typeof stamp !== "number") { return ""; }
    var d = new Date(stamp * 1000);
    function pad(n, w) { n = String(n); while (n.length < w) { n = "0" + n; } return n; }
    return pad(d.getHours(), 2) + ":" + pad(d.getMinutes(), 2) + ":" + pad(d.getSeconds(), 2) +
      "." + pad(d.getMilliseconds(), 3);
  }

  function age(seconds) {
    if (typeof seconds !== "number") { return ""; }
    if (seconds < 60) { return seconds.toFixed(1) + "s"; }
    var m = Math.floor(seconds / 60), s = Math.floor(seconds % 60);
    if (m < 60) { return m + "m" + (s < 10 ? "0" : "") + s + "s"; }
    var h = Math.floor(m / 60); m = m % 60;
    if (h < 24) { return h + "h" + (m < 10 ? "0" : "") + m + "m"; }
    return Math.floor(h / 24) + "d" + (h % 24 < 10 ? "0" : "") + (h % 24) + "h";
  }

  // ------------------------------------------------------------- status page
  function cell(tr, text, cls) {
    var td = document.createElement("td");
    if (cls) { td.className = cls; }
    setText(td, text);
    tr.appendChild(td);
    return td;
  }

  // Rows are updated in place (kept by service and dispatcher), never rebuilt:
  // an element someone holds stays in the page.
  function dispatcherRow(body, svc, d) {
    var rows = body.querySelectorAll("tr[data-service]");
    for (var i = 0; i < rows.length; i++) {
      if (rows[i].getAttribute("data-service") === svc &&
          rows[i].getAttribute("data-dispatcher") === d) { return rows[i]; }
    }
    var tr = document.createElement("tr");
    tr.setAttribute("data-service", svc);
    tr.setAttribute("data-dispatcher", d);
    var td = document.createElement("td");
    var a = document.createElement("a");
    a.href = "/services/" + encodeURIComponent(svc);
    setText(a, svc);
    td.appendChild(a);
    tr.appendChild(td);
    cell(tr, d);
    cell(tr, "", "state").setAttribute("data-state", "");
    cell(tr, "");
    cell(tr, "");
    cell(tr, "");
    cell(tr, "", "age");
    body.appendChild(tr);
    return tr;
  }

  function renderBook(book) {
    var body = document.getElementById("services");
    var keep = [];
    book.services.forEach(function (svc) {
      svc.dispatchers.forEach(function (d) {
        var tr = dispatcherRow(body, svc.name, d.name);
        var cells = tr.children;
        setText(cells[2], d.state);
        cells[2].className = "state state-" + d.state;
        setText(cells[3], d.host);
        setText(cells[4], d.dispatch_port);
        setText(cells[5], d.broadcast_port);
        setText(cells[6], age(d.heartbeat_age));
        keep.push(tr);
      });
    });
    Array.prototype.slice.call(body.children).forEach(function (tr) {
      if (keep.indexOf(tr) < 0 && !(tr.className === "empty" && !keep.length)) {
        body.removeChild(tr);
      }
    });
    if (!keep.length && !body.querySelector("tr.empty")) {
      var tr = document.createElement("tr");
      tr.className = "empty";
      cell(tr, "no dispatcher registered").colSpan = 7;
      body.appendChild(tr);
    }
  }

  function refreshStatus() {
    fetch("/api/services", {cache: "no-store"}).then(function (r) {
      return r.json().then(function (body) { return {ok: r.ok, body: body}; });
    }).then(function (res) {
      var state = document.getElementById("router-state");
      if (res.ok) {
        renderBook(res.body);
        setText(state, "live");
        state.className = "state state-live";
        setText(document.getElementById("router-message"), "");
      } else {
        setText(state, "down");
        state.className = "state state-down";
        setText(document.getElementById("router-message"), res.body.message);
      }
      connection("live", true);
    }).catch(function () {
      connection("gateway unreachable", false);
    }).then(function () {
      setTimeout(refreshStatus, 1000);
    });
  }

  // ------------------------------------------------------------ service page
  var charts = {};

  function drawChart(name) {
    var svg = byAttr("data-chart", name);
    var points = charts[name];
    if (!svg || !points || !points.length) { return; }
    var lo = Infinity, hi = -Infinity;
    points.forEach(function (p) { lo = Math.min(lo, p[1]); hi = Math.max(hi, p[1]); });
    var span = hi - lo || 1;
    var n = points.length;
    var coords = points.map(function (p, i) {
      var x = n === 1 ? 120 : (i * 120) / (n - 1);
      var y = 22 - ((p[1] - lo) / span) * 20;
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    var line = svg.querySelector("polyline");
    if (!line) {
      line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
      svg.appendChild(line);
    }
    line.setAttribute("points", coords.join(" "));
    svg.setAttribute("data-points", String(n));
    var title = svg.querySelector("title");
    if (!title) {
      title = document.createElementNS("http://www.w3.org/2000/svg", "title");
      svg.appendChild(title);
    }
    setText(title, n + " values, " + lo + " .. " + hi);
  }

  function chartPoint(name, stamp, value) {
    if (!byAttr("data-chart", name)) { return; }
    var number = typeof value === "boolean" ? (value ? 1 : 0) : Number(value);
    if (value === null || value === undefined || !isFinite(number)) { return; }
    var points = charts[name] || (charts[name] = []);
    if (points.length && points[points.length - 1][0] === stamp) { return; }
    points.push([stamp, number]);
    while (points.length > CHART_POINTS) { points.shift(); }
    drawChart(name);
  }

  function showValue(ev) {
    var el = byAttr("data-keyword", ev.name);
    if (!el) { return; }
    setText(el, ev.ascii);
    setText(byAttr("data-time", ev.name), clock(ev.timestamp));
    var row = byAttr("data-row", ev.name);
    if (row) { row.classList.toggle("down", ev.connected === false); }
    chartPoint(ev.name, ev.timestamp, ev.value);
  }

  function logEvent(kind, text) {
    var log = document.getElementById("log");
    if (!log) { return; }
    var li = document.createElement("li");
    li.className = "event-" + kind;
    li.setAttribute("data-event", kind);
    setText(li, clock(Date.now() / 1000) + " " + kind + ": " + text);
    log.insertBefore(li, log.firstChild);
    while (log.children.length > 50) { log.removeChild(log.lastChild); }
  }

  function setupWrites(service) {
    var forms = document.querySelectorAll("form[data-write]");
    Array.prototype.forEach.call(forms, function (form) {
      var name = form.getAttribute("data-write");
      form.addEventListener("submit", function (e) {
        e.preventDefault();
        var input = form.querySelector("input");
        var refusal = form.querySelector("[data-refusal]");
        setText(refusal, "");
        form.classList.add("busy");
        fetch("/api/services/" + encodeURIComponent(service) + "/keywords/" +
              encodeURIComponent(name), {
          method: "PUT",
          headers: {"Content-Type": "application/json"},
          body: JSON.stringify({ascii: input.value})
        }).then(function (r) {
          return r.json().then(function (body) { return {ok: r.ok, body: body}; });
        }).then(function (res) {
          if (res.ok) {
            input.value = "";
            setText(byAttr("data-keyword", name), res.body.ascii);
            form.classList.remove("refused");
          } else {
            setText(refusal, res.body.message + " [" + res.body.error + "]");
            form.classList.add("refused");
          }
        }).catch(function (err) {
          setText(refusal, "the gateway did not answer: " + err);
          form.classList.add("refused");
        }).then(function () { form.classList.remove("busy"); });
      });
    });
  }

  function startService(service) {
    var base = "/api/services/" + encodeURIComponent(service);
    fetch(base, {cache: "no-store"}).then(function (r) { return r.json(); }).then(function (data) {
      (data.keywords || []).forEach(function (kw) {
        if (kw.history) {
          charts[kw.name] = kw.history.slice(-CHART_POINTS);
          drawChart(kw.name);
        }
      });
    }).catch(function () {});
    var source = new EventSource(base + "/events");
    source.onopen = function () { connection("live", true); };
    source.onerror = function () { connection("connection lost; reconnecting", false); };
    source.onmessage = function (e) { showValue(JSON.parse(e.data)); };
    ["gap", "restart"].forEach(function (kind) {
      source.addEventListener(kind, function (e) {
        logEvent(kind, JSON.parse(e.data).reason);
      });
    });
    setupWrites(service);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var page = document.body.getAttribute("data-page");
    if (page === "status") { refreshStatus(); }
    if (page === "service") { startService(document.body.getAttribute("data-service")); }
  });
})();
