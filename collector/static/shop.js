/* The demo shop's own page logic: shows who you are to the tracker and what it did, and signs in. */
(function () {
  "use strict";
  function show() {
    var t = window.rtAnalytics;
    if (!t) return;
    document.getElementById("user").textContent = t.userId;
    document.getElementById("known").textContent = t.identified() ? " (signed in as " + t.identified() + ")" : "";
    document.getElementById("session").textContent = t.sessionId;
    document.getElementById("queued").textContent = t.queue().length;
  }
  // Sign in: the account number typed, or a new one (7 digits: apart from the demo producer's users,
  // 1 to PRODUCER_USERS), told to the tracker, which sends an identify event.
  document.getElementById("sign-in").addEventListener("click", function () {
    var t = window.rtAnalytics, field = document.getElementById("account");
    if (!t) return;
    var account = field.value.trim() || String(1000000 + Math.floor(Math.random() * 9000000));
    var status = document.getElementById("status");
    if (t.identify(account) === null) {
      status.textContent = "An account number is a whole number from 1, not " + JSON.stringify(account);
      return;
    }
    field.value = account;
    status.textContent = "Signed in as " + account + " (an identify event on its way)";
    setTimeout(show, 0);
  });
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
