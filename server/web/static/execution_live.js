/* Execution page: live refresh of the summary and the hosts, the "only problems" filter,
 * and the cancel / relaunch buttons. Data comes from the script tag's data-* attributes:
 * data-execution-id, data-live-url, data-keys (JSON {host: change key}), data-final. */
(function () {
  "use strict";
  var script = document.currentScript;
  var id = Number(script.getAttribute("data-execution-id"));
  var liveUrl = script.getAttribute("data-live-url");
  var keys = JSON.parse(script.getAttribute("data-keys") || "{}");
  var startedFinal = script.getAttribute("data-final") === "1";
  var hostsBox = document.getElementById("hosts");
  var problemsOnly = document.getElementById("only-problems");

  function applyFilter() {
    hostsBox.querySelectorAll(".host-block").forEach(function (el) {
      var bad = ["failed", "unreachable"].indexOf(el.getAttribute("data-status")) >= 0;
      el.classList.toggle("hidden", problemsOnly.checked && !bad);
    });
  }
  problemsOnly.addEventListener("change", applyFilter);

  function findHost(name) {
    var found = null;
    hostsBox.querySelectorAll(".host-block").forEach(function (el) { if (el.getAttribute("data-host") === name) found = el; });
    return found;
  }

  function update(data) {
    document.getElementById("summary").innerHTML = data.summary_html;
    var empty = hostsBox.querySelector(".empty");
    data.hosts.forEach(function (h) {
      if (keys[h.name] === h.key) return;
      keys[h.name] = h.key;
      var tmp = document.createElement("div");
      tmp.innerHTML = h.html;
      var fresh = tmp.firstElementChild;
      var old = findHost(h.name);
      if (old) {
        var wasOpen = old.open || fresh.getAttribute("data-status") === "running";
        if (wasOpen || ["failed", "unreachable"].indexOf(fresh.getAttribute("data-status")) >= 0) fresh.open = true;
        // keep the open state of nested step outputs the reader expanded
        var openSteps = Array.prototype.map.call(old.querySelectorAll("details details"), function (d) { return d.open; });
        fresh.querySelectorAll("details details").forEach(function (d, i) { if (openSteps[i]) d.open = true; });
        old.replaceWith(fresh);
      } else {
        if (empty) { empty.remove(); empty = null; }
        fresh.open = true;
        hostsBox.appendChild(fresh);
      }
      TM.localizeTimes(fresh);
    });
    TM.localizeTimes(document.getElementById("summary"));
    applyFilter();
    if (data.final) {
      // The buttons depend on the final state (cancel -> relaunch): take them from a fresh
      // copy of this page instead of reloading it under the reader.
      fetch(window.location.href, { credentials: "same-origin" })
        .then(function (r) { return r.text(); })
        .then(function (html) {
          var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("actions");
          if (fresh) {
            var actions = document.getElementById("actions");
            var keep = problemsOnly.checked;
            actions.innerHTML = fresh.innerHTML;
            problemsOnly = document.getElementById("only-problems");
            problemsOnly.checked = keep;
            problemsOnly.addEventListener("change", applyFilter);
          }
          document.body.setAttribute("data-final", "1");
        });
      return false;
    }
  }

  var since = "";
  function tick() {
    fetch(liveUrl + (since ? "?since=" + encodeURIComponent(since) : ""), { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
      .then(function (data) { since = data.server_time; if (update(data) !== false) setTimeout(tick, document.hidden ? 5000 : 1500); })
      .catch(function () { setTimeout(tick, 5000); });
  }
  if (startedFinal) document.body.setAttribute("data-final", "1");
  else setTimeout(tick, 1500);

  function showError(msg) {
    var box = document.getElementById("action-error");
    box.textContent = msg;
    box.classList.remove("hidden");
  }
  document.getElementById("actions").addEventListener("click", function (ev) {
    var btn = ev.target.closest("button[data-action]");
    if (!btn) return;
    btn.disabled = true;
    var action = btn.getAttribute("data-action");
    var req = action === "cancel"
      ? TM.api("POST", "/api/v1/executions/" + id + "/cancel")
      : TM.api("POST", "/api/v1/executions/" + id + "/relaunch", { failed_only: !!btn.getAttribute("data-failed-only") });
    req.then(function (res) {
      btn.disabled = false;
      if (!res.ok) { showError((res.body && res.body.error && res.body.error.message) || ("Request failed (" + res.status + ")")); return; }
      if (action === "relaunch" && res.body && res.body.id) window.location.href = "/executions/" + res.body.id;
      else window.location.reload();
    });
  });
})();
