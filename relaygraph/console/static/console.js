// relaygraph console: live pages and async forms, in plain JavaScript (nothing to build).
// A page's #live element names its fragment URL (data-live) and an event stream
// (data-sse); every event refetches the fragment, so the page shows what the server knows.
(function () {
  "use strict";
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  function flash(text, isError) {
    var box = document.getElementById("flash");
    if (!box) return;
    var p = document.createElement("p");
    p.textContent = text;
    if (isError) p.className = "error";
    box.appendChild(p);
    setTimeout(function () { p.remove(); }, isError ? 9000 : 4000);
  }

  function openPanels(root) {
    var open = [];
    root.querySelectorAll("details[id]").forEach(function (d) { if (d.open) open.push(d.id); });
    return open;
  }

  var refreshing = false, again = false, timer = null;
  function refresh(live) {
    if (refreshing) { again = true; return; }
    refreshing = true;
    var open = openPanels(live);
    // Someone typing in a field of this part (a comment, say) is not interrupted.
    var el = document.activeElement;
    var typing = el && live.contains(el) && /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName) && el.value;
    if (typing) { refreshing = false; again = false; timer = setTimeout(function () { refresh(live); }, 800); return; }
    fetch(live.dataset.live, { headers: { "Accept": "text/html" }, credentials: "same-origin" })
      .then(function (r) {
        if (r.status === 401 || r.redirected) { window.location.reload(); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html === null) return;
        live.innerHTML = html;
        open.forEach(function (id) { var d = document.getElementById(id); if (d) d.open = true; });
        live.dispatchEvent(new CustomEvent("relaygraph:refreshed", { bubbles: true }));
      })
      .catch(function () { /* the next event or the reconnect tries again */ })
      .finally(function () {
        refreshing = false;
        if (again) { again = false; schedule(live); }
      });
  }
  function schedule(live) {
    clearTimeout(timer);
    timer = setTimeout(function () { refresh(live); }, 120);
  }

  function follow(live) {
    if (!live.dataset.sse || !window.EventSource) return;
    var source = new EventSource(live.dataset.sse);
    var TERMINAL = ["run.completed", "run.failed", "run.cancelled", "run.compensated", "run.compensation_failed"];
    // A list page names the events that change it (data-refresh-on: type prefixes); every
    // other event would only re-render the same rows.
    var wanted = (live.dataset.refreshOn || "").split(" ").filter(Boolean);
    source.onmessage = function (ev) {
      var event = null;
      try { event = JSON.parse(ev.data); } catch (e) { schedule(live); return; }
      var kind = (event && event.type) || "";
      if (!wanted.length || wanted.some(function (p) { return kind.indexOf(p) === 0; })) schedule(live);
      // A run's own page: after its end nothing more comes; stop (no reconnects).
      if (live.dataset.run && event && event.run_id === live.dataset.run && TERMINAL.indexOf(event.type) >= 0) {
        source.close();
      }
    };
    source.onopen = function () { schedule(live); };  // after a reconnect: catch up
  }

  function submitAsync(form, submitter) {
    var data = new FormData(form);
    if (submitter && submitter.name) data.append(submitter.name, submitter.value);
    var action = (submitter && submitter.getAttribute("formaction")) || form.action;
    var buttons = form.querySelectorAll("button");
    buttons.forEach(function (b) { b.disabled = true; });
    fetch(action, { method: "POST", body: data, credentials: "same-origin", headers: { "X-CSRF-Token": csrf } })
      .then(function (r) {
        var type = r.headers.get("content-type") || "";
        return (type.indexOf("json") >= 0 ? r.json() : r.text()).then(function (body) { return { r: r, body: body }; });
      })
      .then(function (res) {
        var target = form.dataset.target && document.querySelector(form.dataset.target);
        if (target && typeof res.body === "string") { target.innerHTML = res.body; return; }
        if (!res.r.ok) { flash((res.body && res.body.detail) || ("error " + res.r.status), true); return; }
        flash((res.body && res.body.message) || "done");
        var live = document.getElementById("live");
        if (live) schedule(live);
      })
      .catch(function (e) { flash("request failed: " + e, true); })
      .finally(function () { buttons.forEach(function (b) { b.disabled = false; }); });
  }

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!form.hasAttribute("data-async")) return;
    ev.preventDefault();
    var submitter = ev.submitter;
    var question = submitter && submitter.dataset.confirm;
    if (question && !window.confirm(question)) return;
    submitAsync(form, submitter);
  });

  // A node of the drawn graph opens its panel (click, Enter or Space).
  function showNode(g) {
    var panel = document.getElementById("node-" + g.getAttribute("data-node"));
    if (!panel) return;
    panel.open = true;
    panel.scrollIntoView({ block: "center" });
    var summary = panel.querySelector("summary");
    if (summary) summary.focus();
  }
  document.addEventListener("click", function (ev) {
    var g = ev.target.closest && ev.target.closest("svg.graph g.node");
    if (g) showNode(g);
  });
  document.addEventListener("keydown", function (ev) {
    var g = ev.target.closest && ev.target.closest("svg.graph g.node");
    if (g && (ev.key === "Enter" || ev.key === " ")) { ev.preventDefault(); showNode(g); }
  });

  document.addEventListener("DOMContentLoaded", function () {
    var live = document.getElementById("live");
    if (live) follow(live);
  });
})();
