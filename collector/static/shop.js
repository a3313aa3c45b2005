/* The demo shop's own page logic: shows who you are to the tracker and what it did. */
(function () {
  "use strict";
  function show() {
    var t = window.rtAnalytics;
    if (!t) return;
    document.getElementById("user").textContent = t.userId;
    document.getElementById("session").textContent = t.sessionId;
    document.getElementById("queued").textContent = t.queue().length;
  }
  document.addEventListener("click", function (e) {
    var el = e.target && e.target.closest ? e.target.closest("[data-track]") : null;
    if (!el) return;
    var name = el.closest(".product").querySelector("h2").textContent;
    var what = { view: "Viewed", click: "Added to cart:", purchase: "Bought" }[el.getAttribute("data-track")];
    document.getElementById("status").textContent = what + " " + name + " (an event on its way)";
    setTimeout(show, 0);
  });
  setInterval(show, 500);
  show();
})();
