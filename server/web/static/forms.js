/* Task Manager — show only the fields that apply to the chosen kind.
 *
 * <div data-show-when="kind=ssh_key,certificate"> is shown only while the form's "kind"
 * control (a select or radio buttons) has one of those values. Without JavaScript every
 * field stays visible and its label says when it applies; the server uses the right one.
 */
(function () {
  "use strict";

  function currentValue(form, name) {
    var checked = form.querySelector('input[type=radio][name="' + name + '"]:checked');
    if (checked) return checked.value;
    var control = form.querySelector('[name="' + name + '"]:not([type=radio])');
    return control ? control.value : "";
  }

  function update(form) {
    form.querySelectorAll("[data-show-when]").forEach(function (el) {
      var rule = el.getAttribute("data-show-when").split("=");
      var wanted = (rule[1] || "").split(",");
      el.classList.toggle("hidden", wanted.indexOf(currentValue(form, rule[0])) === -1);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("form").forEach(function (form) {
      if (!form.querySelector("[data-show-when]")) return;
      update(form);
      form.addEventListener("change", function (ev) {
        if (ev.target && ev.target.name && form.querySelector('[data-show-when^="' + ev.target.name + '="]')) update(form);
      });
    });
  });
})();
