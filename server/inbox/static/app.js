// Live updates for the inbox (progressive enhancement: without script the
// page works, reload it). The server sends an event for every change to a
// request you may decide; the list is refreshed from the page itself, so
// the server renders every card and no card you are typing in is redrawn.
(function () {
  "use strict";
  var list = document.getElementById("requests");
  if (!list || !window.EventSource || !window.fetch) return;
  var timer = null;
  var live = document.getElementById("live");

  function refresh() {
    timer = null;
    fetch("/ui/", { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("requests");
        if (!fresh) return;
        var want = {};
        var added = 0;
        Array.prototype.forEach.call(fresh.querySelectorAll("article.req"), function (card, i) {
          want[card.id] = true;
          if (!document.getElementById(card.id)) {
            list.appendChild(document.importNode(card, true));
            added++;
          }
        });
        Array.prototype.forEach.call(list.querySelectorAll("article.req"), function (card) {
          if (!want[card.id]) card.remove();
        });
        var n = list.querySelectorAll("article.req").length;
        var count = document.getElementById("count");
        if (count) count.textContent = n + " pending";
        var empty = document.getElementById("empty");
        if (empty) empty.hidden = n > 0;
        if (added && live) live.textContent = added === 1 ? "A new request arrived." : added + " new requests arrived.";
        list.dataset.synced = String(Date.now());
      })
      .catch(function () { /* the next event retries */ });
  }

  var es = new EventSource(list.dataset.live);
  es.addEventListener("open", function () { list.dataset.connected = "true"; });
  es.addEventListener("request", function () {
    if (!timer) timer = setTimeout(refresh, 150);
  });
})();
