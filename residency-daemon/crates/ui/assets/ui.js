// residency dashboard: counts the NIS2 deadlines down, once a second.
// The page shows them without this script, right as of when it was made.
"use strict";
(function () {
  function span(s) {
    var d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d > 0) return d + " d " + h + " h";
    if (h > 0) return h + " h " + m + " min " + (s % 60) + " s";
    return m + " min " + (s % 60) + " s";
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll("time[data-due]").forEach(function (t) {
      var s = Math.round((Date.parse(t.getAttribute("datetime")) - now) / 1000);
      t.textContent = s >= 0 ? span(s) + " left" : "overdue by " + span(-s);
      var clock = t.closest(".clock");
      if (clock) clock.setAttribute("data-state", s >= 0 ? "running" : "overdue");
    });
  }
  tick();
  setInterval(tick, 1000);
})();
