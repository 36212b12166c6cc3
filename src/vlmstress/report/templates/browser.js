// Sample browser filters. Only toggles `hidden` from data-* attributes the report wrote; it never
// reads, parses or evaluates any model text, and the page's CSP allows this script alone.
(function () {
  "use strict";
  var controls = Array.prototype.slice.call(document.querySelectorAll("select[data-filter]"));
  var samples = Array.prototype.slice.call(document.querySelectorAll(".sample"));
  var counter = document.getElementById("shown-count");

  function apply() {
    var wanted = controls.map(function (c) { return [c.getAttribute("data-filter"), c.value]; });
    var shown = 0;
    samples.forEach(function (card) {
      var any = false;
      card.querySelectorAll(".attempt").forEach(function (row) {
        var ok = wanted.every(function (w) { return w[1] === "" || row.getAttribute("data-" + w[0]) === w[1]; });
        row.hidden = !ok;
        any = any || ok;
      });
      card.hidden = !any;
      if (any) { shown += 1; }
    });
    if (counter) { counter.textContent = String(shown); }
  }

  controls.forEach(function (c) { c.addEventListener("change", apply); });
  apply();
  document.body.setAttribute("data-browser-ready", "1");
})();
