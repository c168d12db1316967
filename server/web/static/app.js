/* Task Manager — small progressive enhancements; every page works without them.
 *
 *  - <time datetime="ISO"> shown in the viewer's time zone (Intl.DateTimeFormat);
 *    data-format="relative" shows "5 min ago" with the full date as a tooltip,
 *    data-format="date" shows only the date.
 *  - Inline form validation: each invalid field gets a .field-error message under it,
 *    both from the browser's constraints and from the server ({"error": {"field", "message"}}).
 *  - data-confirm="Question?" on a button or form asks before submitting.
 *  - <tr data-href="..."> rows are links.
 *  - TM.api(method, url, body) calls the JSON API with the page's CSRF token.
 *  - TM.poll(url, ms, onData) polls a JSON endpoint until onData returns false.
 */
(function () {
  "use strict";

  var TM = (window.TM = window.TM || {});
  var tz = (Intl.DateTimeFormat().resolvedOptions() || {}).timeZone || "UTC";

  var fullFmt = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short",
  });
  var dateFmt = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "short", day: "2-digit" });
  var shortFmt = new Intl.DateTimeFormat(undefined, {
    month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit",
  });
  var rel = typeof Intl.RelativeTimeFormat === "function" ? new Intl.RelativeTimeFormat(undefined, { numeric: "auto" }) : null;

  function relative(date) {
    var secs = (date.getTime() - Date.now()) / 1000;
    var abs = Math.abs(secs);
    if (!rel) return shortFmt.format(date);
    if (abs < 45) return rel.format(Math.round(secs), "second");
    if (abs < 2700) return rel.format(Math.round(secs / 60), "minute");
    if (abs < 79200) return rel.format(Math.round(secs / 3600), "hour");
    if (abs < 604800) return rel.format(Math.round(secs / 86400), "day");
    return shortFmt.format(date);
  }

  TM.formatDuration = function (seconds) {
    if (seconds === null || seconds === undefined || isNaN(seconds)) return "";
    seconds = Math.max(0, Number(seconds));
    if (seconds < 1) return Math.round(seconds * 1000) + " ms";
    if (seconds < 60) return (Math.round(seconds * 10) / 10) + " s";
    var m = Math.floor(seconds / 60), s = Math.round(seconds % 60);
    if (m < 60) return m + " min " + s + " s";
    var h = Math.floor(m / 60);
    return h + " h " + (m % 60) + " min";
  };

  TM.localizeTimes = function (root) {
    (root || document).querySelectorAll("time[datetime]").forEach(function (el) {
      var iso = el.getAttribute("datetime");
      var d = new Date(iso);
      if (isNaN(d.getTime())) return;
      var mode = el.getAttribute("data-format");
      el.title = fullFmt.format(d);
      if (mode === "relative") el.textContent = relative(d);
      else if (mode === "date") el.textContent = dateFmt.format(d);
      else if (mode === "short") el.textContent = shortFmt.format(d);
      else el.textContent = fullFmt.format(d);
    });
    (root || document).querySelectorAll("[data-duration]").forEach(function (el) {
      var v = el.getAttribute("data-duration");
      if (v !== "") el.textContent = TM.formatDuration(parseFloat(v));
    });
    document.querySelectorAll("[data-tz]").forEach(function (el) { el.textContent = tz; });
  };

  TM.csrf = function () {
    var m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.getAttribute("content") : "";
  };

  /* JSON API call with the session cookie and the CSRF header; resolves to
     {ok, status, body}. */
  TM.api = function (method, url, body) {
    var opts = { method: method, credentials: "same-origin", headers: { "Accept": "application/json" } };
    if (method !== "GET") opts.headers["X-CSRFToken"] = TM.csrf();
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    return fetch(url, opts).then(function (resp) {
      return resp.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = { raw: text }; }
        return { ok: resp.ok, status: resp.status, body: data };
      });
    });
  };

  /* Poll a JSON endpoint; onData(body) returns false to stop. Backs off when the
     tab is hidden and on errors. */
  TM.poll = function (url, ms, onData) {
    var stopped = false, failures = 0;
    function tick() {
      if (stopped) return;
      if (document.hidden) { setTimeout(tick, ms * 3); return; }
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
        .then(function (body) {
          failures = 0;
          if (onData(body) === false) { stopped = true; return; }
          setTimeout(tick, ms);
        })
        .catch(function () { failures += 1; setTimeout(tick, Math.min(ms * Math.pow(2, failures), 30000)); });
    }
    setTimeout(tick, ms);
    return { stop: function () { stopped = true; } };
  };

  /* --- inline validation ---------------------------------------------------- */
  function errorSlot(field) {
    var id = field.id || field.name;
    var slot = field.form && field.form.querySelector('.field-error[data-for="' + id + '"]');
    if (slot) return slot;
    var next = field.nextElementSibling;
    if (next && next.classList.contains("field-error")) return next;
    var parent = field.closest("label") || field;
    next = parent.nextElementSibling;
    if (next && next.classList.contains("field-error")) return next;
    slot = document.createElement("div");
    slot.className = "field-error";
    slot.setAttribute("role", "alert");
    if (id) slot.setAttribute("data-for", id);
    parent.insertAdjacentElement("afterend", slot);
    return slot;
  }

  TM.setFieldError = function (field, message) {
    var slot = errorSlot(field);
    slot.textContent = message || "";
    field.classList.toggle("invalid", !!message);
    if (message) field.setAttribute("aria-invalid", "true"); else field.removeAttribute("aria-invalid");
  };

  /* Show an API error ({"error": {"field", "message"}}) next to its field, or at the top. */
  TM.showApiError = function (form, body) {
    var err = (body && body.error) || { message: "Something went wrong." };
    var field = err.field && form.querySelector('[name="' + err.field + '"]');
    if (field) { TM.setFieldError(field, err.message); field.focus(); return; }
    var box = form.querySelector(".form-error");
    if (!box) {
      box = document.createElement("p");
      box.className = "error form-error";
      box.setAttribute("role", "alert");
      form.insertBefore(box, form.firstChild);
    }
    box.textContent = err.message;
  };

  /* field.validity, not checkValidity(): that fires "invalid", whose handler lands here. */
  function validateField(field) {
    if (!field.willValidate) return true;
    if (field.validity.valid) { TM.setFieldError(field, ""); return true; }
    TM.setFieldError(field, field.getAttribute("data-error") || field.validationMessage);
    return false;
  }

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!(form instanceof HTMLFormElement)) return;
    var submitter = ev.submitter;
    var question = (submitter && submitter.getAttribute("data-confirm")) || form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { ev.preventDefault(); return; }
    if (form.hasAttribute("novalidate") && !form.hasAttribute("data-validate")) return;
    var fields = Array.prototype.slice.call(form.elements);
    var firstBad = null;
    fields.forEach(function (f) { if (!validateField(f) && !firstBad) firstBad = f; });
    if (firstBad) { ev.preventDefault(); firstBad.focus(); }
  }, true);

  document.addEventListener("invalid", function (ev) {
    // Replace the browser's bubble with an inline message.
    ev.preventDefault();
    validateField(ev.target);
  }, true);

  /* A field shown in error (by the browser or the server) is checked again as it is fixed. */
  function recheck(ev) {
    var f = ev.target;
    if (!f.willValidate || !f.form) return;
    var slot = f.form.querySelector('.field-error[data-for="' + (f.id || f.name) + '"]');
    if (f.classList.contains("invalid") || f.getAttribute("aria-invalid") === "true" || (slot && slot.textContent.trim())) {
      validateField(f);
    }
  }
  document.addEventListener("input", recheck);
  document.addEventListener("change", recheck);

  document.addEventListener("click", function (ev) {
    var toggle = ev.target.closest(".nav-toggle");
    if (toggle) {
      var nav = document.getElementById(toggle.getAttribute("aria-controls"));
      toggle.setAttribute("aria-expanded", String(nav.classList.toggle("open")));
    }
    document.querySelectorAll("details.nav-menu[open]").forEach(function (menu) {
      if (!menu.contains(ev.target)) menu.open = false;
    });
    var btn = ev.target.closest("[data-confirm]:not(form):not([type=submit])");
    if (btn && !window.confirm(btn.getAttribute("data-confirm"))) { ev.preventDefault(); ev.stopPropagation(); return; }
    var row = ev.target.closest("tr[data-href]");
    if (row && !ev.target.closest("a, button, input, select, label, summary")) {
      if (ev.ctrlKey || ev.metaKey) window.open(row.getAttribute("data-href"), "_blank");
      else window.location.href = row.getAttribute("data-href");
    }
  });

  function markActiveNav() {
    var path = window.location.pathname;
    document.querySelectorAll(".topbar nav a").forEach(function (a) {
      var href = a.getAttribute("href");
      var exact = a.hasAttribute("data-nav-exact");
      if ((exact && path === href) || (!exact && href !== "/" && (path === href || path.indexOf(href + "/") === 0))) {
        a.classList.add("active");
        a.setAttribute("aria-current", "page");
        var menu = a.closest(".nav-menu");
        if (menu) menu.querySelector("summary").classList.add("active");
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    // a box that scrolls sideways (wide table, long output) can be scrolled with the keyboard
    document.querySelectorAll(".table-wrap, pre").forEach(function (el) {
      if (el.scrollWidth > el.clientWidth || el.scrollHeight > el.clientHeight) el.tabIndex = 0;
    });
    TM.localizeTimes(document);
    markActiveNav();
    // Keep relative times fresh.
    setInterval(function () {
      document.querySelectorAll('time[data-format="relative"]').forEach(function (el) {
        var d = new Date(el.getAttribute("datetime"));
        if (!isNaN(d.getTime())) el.textContent = relative(d);
      });
    }, 30000);
  });
})();
