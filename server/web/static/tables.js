/* Task Manager — lists and pickers; every page works without it.
 *
 *  - <th> of a .table: click to sort the rows on this page (numbers, times, text).
 *  - <input type=checkbox data-select-all="NAME">: ticks every visible checkbox NAME; a
 *    [data-bulk-count] in the bulk form says how many are ticked.
 *  - <select multiple> with many options: a search box, "select shown", "clear", "selected
 *    first", and a count of what is selected (the task form's host picker).
 */
(function () {
  "use strict";

  function cellValue(row, index) {
    var cell = row.cells[index];
    if (!cell) return "";
    var time = cell.querySelector("time[datetime]");
    if (time) return Date.parse(time.getAttribute("datetime"));
    var dur = cell.querySelector("[data-duration]");
    if (dur) return parseFloat(dur.getAttribute("data-duration"));
    var text = cell.textContent.trim();
    var num = text.replace(/[\s%]/g, "");
    return num !== "" && !isNaN(num) ? parseFloat(num) : text.toLowerCase();
  }

  function sortBy(th) {
    var table = th.closest("table");
    var body = table.tBodies[0];
    if (!body) return;
    var index = Array.prototype.indexOf.call(th.parentElement.children, th);
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th[aria-sort]").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, index), y = cellValue(b, index);
      var c = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
      return ascending ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }

  function sortable(table) {
    if (!table.tHead || !table.tBodies[0] || table.tBodies[0].rows.length < 2) return;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      if (!th.textContent.trim() || th.querySelector("input, button")) return;
      var btn = document.createElement("button");
      btn.type = "button";
      btn.className = "sort";
      while (th.firstChild) btn.appendChild(th.firstChild);
      th.appendChild(btn);
      btn.addEventListener("click", function () { sortBy(th); });
    });
  }

  function bulk(form) {
    var name = form.getAttribute("data-bulk");
    var boxes = function () { return document.querySelectorAll('input[type=checkbox][name="' + name + '"][form="' + form.id + '"]'); };
    var all = document.querySelector('[data-select-all="' + name + '"]');
    var count = form.querySelector("[data-bulk-count]");
    function refresh() {
      var ticked = Array.prototype.filter.call(boxes(), function (b) { return b.checked; }).length;
      if (count) count.textContent = ticked ? ticked + " ticked" : "No host ticked";
      form.querySelectorAll("button[name=action]").forEach(function (b) { b.disabled = !ticked; });
      if (all) all.checked = ticked > 0 && ticked === boxes().length;
    }
    if (all) all.addEventListener("change", function () {
      boxes().forEach(function (b) { b.checked = all.checked; });
      refresh();
    });
    document.addEventListener("change", function (ev) { if (ev.target.name === name) refresh(); });
    refresh();
  }

  function picker(select) {
    var box = document.createElement("div");
    box.className = "picker toolbar";
    var label = select.labels && select.labels[0] ? select.labels[0].textContent.trim() : "options";
    box.innerHTML = '<input type="search" placeholder="Filter" aria-label="Filter ' + label.replace(/"/g, "") + '">' +
      '<button type="button" class="btn small" data-pick="shown">Select shown</button>' +
      '<button type="button" class="btn small" data-pick="none">Clear</button>' +
      '<button type="button" class="btn small" data-pick="sort">Selected first</button>' +
      '<span class="muted small" aria-live="polite"></span>';
    select.parentNode.insertBefore(box, select);
    var search = box.querySelector("input"), note = box.querySelector("span");
    function count() {
      var n = select.selectedOptions.length;
      note.textContent = n + " of " + select.options.length + " selected";
    }
    search.addEventListener("input", function () {
      var q = search.value.trim().toLowerCase();
      Array.prototype.forEach.call(select.options, function (o) {
        o.hidden = !!q && o.textContent.toLowerCase().indexOf(q) < 0 && !o.selected;
      });
    });
    box.addEventListener("click", function (ev) {
      var which = ev.target.getAttribute("data-pick");
      if (!which) return;
      if (which === "sort") {
        var opts = Array.prototype.slice.call(select.options);
        opts.sort(function (a, b) { return (b.selected - a.selected) || a.textContent.localeCompare(b.textContent); });
        opts.forEach(function (o) { select.appendChild(o); });
        return;
      }
      Array.prototype.forEach.call(select.options, function (o) {
        if (which === "none") o.selected = false;
        else if (!o.hidden) o.selected = true;
      });
      select.dispatchEvent(new Event("change", { bubbles: true }));
    });
    select.addEventListener("change", count);
    count();
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("table.table").forEach(sortable);
    document.querySelectorAll("form[data-bulk]").forEach(bulk);
    document.querySelectorAll("select[multiple]").forEach(function (s) { if (s.options.length > 5) picker(s); });
  });
})();
