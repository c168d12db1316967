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

  var ORDER = ["failed", "unreachable", "cancelled", "running", "pending"];
  function rank(el) {
    var i = ORDER.indexOf(el.getAttribute("data-status"));
    return i < 0 ? ORDER.length : i;
  }
  /* Keep failures first as hosts change status (the server's order: status, then name). */
  function placeByStatus(el) {
    var blocks = Array.prototype.filter.call(hostsBox.querySelectorAll(".host-block"), function (b) { return b !== el; });
    var r = rank(el), name = el.getAttribute("data-host");
    var before = null;
    for (var i = 0; i < blocks.length; i++) {
      var br = rank(blocks[i]);
      if (br > r || (br === r && blocks[i].getAttribute("data-host") > name)) { before = blocks[i]; break; }
    }
    if (before) { if (el.nextElementSibling !== before) hostsBox.insertBefore(el, before); }
    else if (hostsBox.lastElementChild !== el) hostsBox.appendChild(el);
  }

  function findHost(name) {
    var found = null;
    hostsBox.querySelectorAll(".host-block").forEach(function (el) { if (el.getAttribute("data-host") === name) found = el; });
    return found;
  }

  function update(data) {
    applyTails(data.tails);
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
      placeByStatus(fresh);
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

  /* Running steps' output: the page asks only for what comes after what it has
     (data-offset, per stream) and appends it, each new line marked with the time it came. */
  var clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  function tailParam() {
    var steps = {};
    hostsBox.querySelectorAll("pre.live[data-step]").forEach(function (pre) {
      var s = pre.getAttribute("data-step");
      steps[s] = steps[s] || { stdout: 0, stderr: 0 };
      steps[s][pre.getAttribute("data-stream")] = pre.getAttribute("data-offset");
    });
    return Object.keys(steps).map(function (s) { return s + ":" + steps[s].stdout + ":" + steps[s].stderr; }).join(",");
  }
  function applyTails(tails) {
    (tails || []).forEach(function (t) {
      ["stdout", "stderr"].forEach(function (stream) {
        var pre = hostsBox.querySelector('pre.live[data-step="' + t.step + '"][data-stream="' + stream + '"]');
        var part = t[stream];
        if (!pre || !part || Number(pre.getAttribute("data-offset")) > part.next_offset) return;
        if (part.html) {
          var mark = '<span class="ts" data-ts="' + clock.format(new Date()) + '"></span>';
          var atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
          pre.insertAdjacentHTML("beforeend", mark + part.html.replace(/\n(?=[\s\S])/g, "\n" + mark));
          if (atEnd) pre.scrollTop = pre.scrollHeight;
        }
        pre.setAttribute("data-offset", part.next_offset);
      });
    });
  }

  var since = "";
  function tick() {
    var params = [];
    if (since) params.push("since=" + encodeURIComponent(since));
    var tail = tailParam();
    if (tail) params.push("tail=" + tail);
    fetch(liveUrl + (params.length ? "?" + params.join("&") : ""), { credentials: "same-origin", headers: { "Accept": "application/json" } })
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
  /* "show all": the whole output in place of its tail. */
  hostsBox.addEventListener("click", function (ev) {
    var link = ev.target.closest("a[data-show-all]");
    if (!link) return;
    ev.preventDefault();
    var pre = link.parentElement.nextElementSibling;
    fetch(link.href, { credentials: "same-origin" }).then(function (r) { return r.text(); }).then(function (html) {
      pre.innerHTML = html;
      link.parentElement.remove();
    });
  });

  document.getElementById("actions").addEventListener("click", function (ev) {
    var copy = ev.target.closest("#copy-failed");
    if (copy) {
      var names = copy.getAttribute("data-hosts");
      var note = document.getElementById("action-note");
      var done = function (msg) { note.textContent = msg; note.classList.remove("hidden"); };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(names).then(function () { done("Copied " + names.split("\n").length + " host names."); },
          function () { done(names.split("\n").join(", ")); });
      } else done(names.split("\n").join(", "));
      return;
    }
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
