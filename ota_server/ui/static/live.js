// The dashboard's only script: it refreshes rollout progress and board status from
// /ui/live.json every few seconds, and asks before an Abort. Pages work without it.
(function () {
  "use strict";
  var PERIOD_MS = 5000;
  var KEYS = ["confirmed", "installed", "downloading", "offered", "failed", "rolled_back"];

  function boardIds() {
    var ids = [];
    document.querySelectorAll("[data-board]").forEach(function (el) {
      ids.push(el.getAttribute("data-board"));
    });
    return ids.slice(0, 200);
  }

  function setText(root, field, text) {
    var el = root.querySelector('[data-field="' + field + '"]');
    if (el && text !== undefined && text !== null) { el.textContent = String(text); }
    return el;
  }

  function updateRollout(section, live) {
    var state = setText(section, "state", live.state);
    if (state) { state.className = "pill state-" + live.state; }
    setText(section, "stage", live.stage);
    setText(section, "eligible", live.eligible);
    setText(section, "reason", live.reason);
    setText(section, "failure_rate", live.failure_rate === null ? "no results yet"
            : Math.round(100 * live.failure_rate) + "%");
    var total = live.eligible || 0, sum = 0;
    KEYS.forEach(function (k) { sum += live.counts[k]; });
    total = Math.max(total, sum);
    var x = 0;
    KEYS.forEach(function (k) {
      var cell = section.querySelector('[data-count="' + k + '"]');
      if (cell) { cell.textContent = String(live.counts[k]); }
      var rect = section.querySelector('[data-key="' + k + '"]');
      var w = total ? 100 * live.counts[k] / total : 0;
      if (rect) { rect.setAttribute("x", String(x)); rect.setAttribute("width", String(w)); }
      x += w;
    });
  }

  function apply(data) {
    Object.keys(data.rollouts || {}).forEach(function (channel) {
      document.querySelectorAll("[data-live-rollout]").forEach(function (section) {
        if (section.getAttribute("data-live-rollout") === channel) {
          updateRollout(section, data.rollouts[channel]);
        }
      });
    });
    Object.keys(data.fleet || {}).forEach(function (status) {
      var el = document.querySelector('[data-live-fleet="' + status + '"]');
      if (el) { el.textContent = String(data.fleet[status]); }
    });
    var boards = data.boards || {};
    document.querySelectorAll("[data-board]").forEach(function (row) {
      var status = boards[row.getAttribute("data-board")];
      var pill = row.querySelector('[data-field="status"]');
      if (status && pill) {
        pill.textContent = status.replace("_", " ");
        pill.className = "pill status-" + status;
      }
    });
    document.body.setAttribute("data-live-updated", String(Date.now()));
  }

  function poll() {
    if (document.hidden) { return; }
    var query = [];
    if (document.querySelector("[data-live-fleet]")) { query.push("fleet=1"); }
    var ids = boardIds();
    if (ids.length) { query.push("boards=" + ids.map(encodeURIComponent).join(",")); }
    fetch("/ui/live.json?" + query.join("&"), {credentials: "same-origin", cache: "no-store"})
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); return null; }  // session ended
        return r.ok ? r.json() : null;
      })
      .then(function (data) { if (data) { apply(data); } })
      .catch(function () { /* the server is away: try again at the next tick */ });
  }

  document.addEventListener("DOMContentLoaded", function () {
    // The buttons that cannot be undone name their question in data-confirm.
    document.querySelectorAll("button[data-confirm]").forEach(function (button) {
      button.form.addEventListener("submit", function (event) {
        if (!window.confirm(button.dataset.confirm)) {
          event.preventDefault();
        }
      });
    });
    if (document.querySelector("[data-live-rollout], [data-live-fleet], [data-board]")) {
      window.setInterval(poll, PERIOD_MS);
    }
  });
})();
