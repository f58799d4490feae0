// Progressive enhancement, and the only script: an order page that waits for the stock
// follows its order by server-sent events and swaps in the new status. Without JavaScript
// the page refreshes itself (a <noscript> meta refresh) and has a Refresh link.
"use strict";
(function () {
  const region = document.querySelector("[data-live-order]");
  if (!region || !("EventSource" in window)) {
    return;
  }
  const source = new EventSource(region.getAttribute("data-live-order"));
  source.addEventListener("status", function (event) {
    // The fragment is rendered (and escaped) by the server, like the page itself.
    region.innerHTML = event.data;
  });
  source.addEventListener("end", function () {
    source.close();
    region.removeAttribute("data-live-order");
  });
})();
