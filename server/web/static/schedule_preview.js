/* Schedule form: describe the cron expression and list its next runs as the user types.
 * The preview endpoint comes from the script tag's data-preview-url. */
(function () {
  "use strict";
  var script = document.currentScript;
  var previewUrl = script && script.getAttribute("data-preview-url");
  var cron = document.getElementById("sch-cron"), tz = document.getElementById("sch-timezone");
  var desc = document.getElementById("sch-description"), list = document.getElementById("sch-next-runs");
  var box = document.getElementById("sch-preview");
  if (!cron || !tz || !previewUrl) return;
  var timer = null, seq = 0;
  function refresh() {
    var mine = ++seq;
    var url = previewUrl + "?cron=" + encodeURIComponent(cron.value) + "&timezone=" + encodeURIComponent(tz.value || "UTC");
    TM.api("GET", url).then(function (r) {
      if (mine !== seq) return;
      TM.setFieldError(cron, ""); TM.setFieldError(tz, "");
      list.innerHTML = "";
      box.classList.toggle("hidden", !r.ok);
      if (!r.ok) {
        desc.textContent = "";
        var err = (r.body && r.body.error) || {};
        TM.setFieldError(err.field === "timezone" ? tz : cron, err.message || "invalid");
        return;
      }
      desc.textContent = r.body.description;
      r.body.next_runs.forEach(function (run) {
        var li = document.createElement("li"), time = document.createElement("time");
        time.setAttribute("datetime", run); time.setAttribute("data-format", "full"); time.textContent = run;
        li.appendChild(time); list.appendChild(li);
      });
      TM.localizeTimes(list);
    });
  }
  function later() { clearTimeout(timer); timer = setTimeout(refresh, 250); }
  // A new schedule of a user without a zone of his own: the browser's zone, not UTC.
  var browserZone = (Intl.DateTimeFormat().resolvedOptions() || {}).timeZone;
  if (tz.hasAttribute("data-browser-default") && browserZone && tz.value !== browserZone) {
    tz.value = browserZone;
    later();
  }
  cron.addEventListener("input", later); tz.addEventListener("input", later); tz.addEventListener("change", later);
})();
