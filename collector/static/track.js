/*
 * rt-analytics tracker: page views, clicks on marked elements, a session per tab, batching,
 * sendBeacon when the page hides, retries with the same event_ids. No build step, no dependency.
 *
 *   <script src="http://127.0.0.1:8090/shop/track.js" defer></script>
 *   <button data-track="click" data-product-id="3">Add to cart</button>
 *   <button data-track="purchase" data-product-id="3" data-amount="19.99">Buy</button>
 *
 * Events follow the contract of `user_events` (README, "The event contract"). The collector is
 * the script's own origin unless data-endpoint says otherwise; data-user-id sets the user (else a
 * random id kept in localStorage). window.rtAnalytics.track(type, {product_id, amount}) sends
 * other events (of the types in the collector's COLLECTOR_EVENT_TYPES). An event leaves the queue
 * only when the collector answered 202 (or refused it for good): until then it is kept in
 * sessionStorage and sent again with its event_id, which the consumer counts once.
 *
 * Every event carries where the visitor came from: `referrer` (document.referrer) and the page's
 * utm_source, utm_medium and utm_campaign, each only when present and trimmed to the contract's
 * bounds. window.rtAnalytics.identify(userId) says that this browser's user is the known user
 * `userId` (a sign-in): an `identify` event.
 */
(function (window, document) {
  "use strict";
  var script = document.currentScript;
  var origin = script ? new URL(script.src, location.href).origin : location.origin;
  var endpoint = (script && script.getAttribute("data-endpoint")) || origin + "/v1/events";
  var BATCH = 50, DELAY_MS = 1000, MAX_QUEUE = 500, MAX_BACKOFF_MS = 30000;
  var QUEUE_KEY = "rta_queue", SESSION_KEY = "rta_session", USER_KEY = "rta_user", KNOWN_KEY = "rta_known";
  var REFERRER_MAX = 2048, UTM_MAX = 100;  // the contract's bounds (common/contract.py)

  function store(area) {
    try { var s = window[area]; s.setItem("rta_probe", "1"); s.removeItem("rta_probe"); return s; }
    catch (e) { return null; }  // storage off (private mode, cookies blocked): memory only
  }
  var local = store("localStorage"), session = store("sessionStorage");

  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    var b = new Uint8Array(16);
    crypto.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    var h = Array.prototype.map.call(b, function (x) { return (x + 256).toString(16).slice(1); }).join("");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  function remembered(area, key, make) {
    var value = area && area.getItem(key);
    if (!value) { value = String(make()); if (area) area.setItem(key, value); }
    return value;
  }

  // user_id: a positive integer (the contract); a random one below 2^53 when the page gives none.
  var userId = Number((script && script.getAttribute("data-user-id")) || remembered(local, USER_KEY, function () {
    var w = new Uint32Array(2);
    crypto.getRandomValues(w);
    return (w[0] & 0x1fffff) * 4294967296 + w[1] + 1;
  }));
  // One session per tab: sessionStorage is per tab and survives reloads and navigation.
  var sessionId = remembered(session, SESSION_KEY, uuid);

  var queue = [];
  try { queue = JSON.parse((session && session.getItem(QUEUE_KEY)) || "[]"); } catch (e) { queue = []; }
  var sending = false, timer = null, backoff = DELAY_MS;

  function save() {
    if (session) session.setItem(QUEUE_KEY, JSON.stringify(queue));
  }

  // Where the visitor came from, read once per page and sent on each of its events (the marts count
  // a session by its first touch). Trimmed or left out, never refused: the collector would refuse
  // the whole event for one field out of the contract's bounds.
  // referrer: an absolute http(s) URL of printable ASCII without userinfo (what browsers give), cut to
  // 2,048 characters (the host, which the marts read, comes first); anything else is left out.
  var URL_PATTERN = /^https?:\/\/[A-Za-z0-9\[][A-Za-z0-9._~%!$&'()*+,;=:\[\]-]*(?:[\/?#][!-~]*)?$/;
  function referrer() {
    var r = String(document.referrer || "").slice(0, REFERRER_MAX);
    return URL_PATTERN.test(r) ? r : null;
  }
  // utm_*: printable text (no control, format, surrogate or private-use character; any run of
  // whitespace becomes one space), trimmed, at most 100 characters (code points, as the contract counts).
  var NOT_PRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}]/gu;
  function utm(params, name) {
    var v = params && params.get(name);
    if (!v) return null;
    v = v.replace(/\s+/g, " ").replace(NOT_PRINTABLE, "").trim();
    return Array.from(v).slice(0, UTM_MAX).join("").trim() || null;
  }
  var params = null;
  try { params = new URLSearchParams(location.search); } catch (e) { params = null; }
  var source = {
    referrer: referrer(),
    utm_source: utm(params, "utm_source"),
    utm_medium: utm(params, "utm_medium"),
    utm_campaign: utm(params, "utm_campaign")
  };

  function device() {
    return /Mobi|Android/i.test(navigator.userAgent) ? "mobile" : "desktop";
  }

  function track(type, props) {
    props = props || {};
    var event = {
      schema_version: 1,
      event_id: uuid(),
      event_type: type,
      user_id: userId,
      session_id: sessionId,
      occurred_at: new Date().toISOString(),
      page: location.pathname.slice(0, 2048),
      device: device()
    };
    for (var field in source) if (source[field]) event[field] = source[field];
    if (props.product_id) event.product_id = Number(props.product_id);
    if (type === "purchase" && props.amount != null) event.amount = Number(props.amount);
    if (type === "identify" && props.identified_user_id != null) event.identified_user_id = props.identified_user_id;
    queue.push(event);
    if (queue.length > MAX_QUEUE) queue.splice(0, queue.length - MAX_QUEUE);  // bounded: the oldest go
    save();
    schedule(queue.length >= BATCH ? 0 : DELAY_MS);
    return event.event_id;
  }

  function schedule(ms) {
    if (timer) clearTimeout(timer);
    timer = setTimeout(flush, ms);
  }

  function forget(ids) {
    queue = queue.filter(function (e) { return !ids[e.event_id]; });
    save();
  }

  function flush() {
    timer = null;
    if (sending || !queue.length) return;
    var batch = queue.slice(0, BATCH);
    sending = true;
    fetch(endpoint, {
      method: "POST",
      headers: { "Content-Type": "text/plain;charset=UTF-8" },  // a simple request: no preflight
      body: JSON.stringify(batch),
      keepalive: true
    }).then(function (r) {
      sending = false;
      if (r.status === 202 || r.status === 400 || r.status === 403 || r.status === 413) {
        // 202: acknowledged (each rejected one is refused for good); 400/403/413: this batch never will be
        var done = {};
        batch.forEach(function (e) { done[e.event_id] = true; });
        forget(done);
        backoff = DELAY_MS;
        if (r.status !== 202 && window.console) console.warn("rt-analytics: collector refused a batch", r.status);
        if (queue.length) schedule(0);
        return;
      }
      retry(r.headers.get("Retry-After"));  // 429, 503, ...: the same events again, later
    }, function () {
      sending = false;
      retry(null);
    });
  }

  function retry(after) {
    var ms = after ? Number(after) * 1000 : backoff;
    backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    schedule(Math.max(ms, DELAY_MS));
  }

  // When the page hides (tab switch, navigation, close): one last send that outlives the page.
  // The events stay queued: if the beacon is lost, the next page of this tab sends them again.
  function beacon() {
    if (!queue.length || !navigator.sendBeacon) return;
    navigator.sendBeacon(endpoint, new Blob([JSON.stringify(queue.slice(0, BATCH))], { type: "text/plain" }));
  }
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") beacon();
  });
  window.addEventListener("pagehide", beacon);

  document.addEventListener("click", function (e) {
    var el = e.target && e.target.closest ? e.target.closest("[data-track]") : null;
    if (!el) return;
    track(el.getAttribute("data-track") || "click", {
      product_id: el.getAttribute("data-product-id"),
      amount: el.getAttribute("data-amount")
    });
  }, true);

  // identify(knownId): this browser's user is the known user `knownId` (a positive integer up to
  // 2^53 - 1, which a JS number holds exactly; or its decimal text). It sends an `identify` event whose
  // user_id stays the anonymous id and whose identified_user_id is the known one. Later events keep
  // the anonymous user_id too: the marts stitch every event of the anonymous id, before and after,
  // to the known user (the latest identify wins), so the tracker never switches ids. Returns the
  // event_id, or null (and a warning) for an id the contract would refuse.
  var known = Number((local && local.getItem(KNOWN_KEY)) || 0) || null;
  function identify(knownId) {
    var id = typeof knownId === "number" ? knownId : /^\s*[0-9]+\s*$/.test(String(knownId)) ? Number(knownId) : NaN;
    if (!Number.isSafeInteger(id) || id < 1) {
      if (window.console) console.warn("rt-analytics: identify needs a positive integer user id, got", knownId);
      return null;
    }
    known = id;
    if (local) local.setItem(KNOWN_KEY, String(id));
    return track("identify", { identified_user_id: id });
  }

  window.rtAnalytics = {
    track: track, identify: identify, flush: flush, userId: userId, sessionId: sessionId,
    identified: function () { return known; },  // the known user this browser last identified as, or null
    queue: function () { return queue.slice(); }
  };
  track("view");
  if (queue.length > 1) schedule(0);  // left over from the last page of this tab
})(window, document);
