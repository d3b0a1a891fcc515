// ray-pipeline console: live parts of a page refresh without a full reload; the try-it form.
// No library, no build step, nothing fetched from another host.
(function () {
  "use strict";

  function poll(el) {
    var url = el.getAttribute("data-poll");
    var every = parseFloat(el.getAttribute("data-every") || "5") * 1000;
    function tick() {
      if (document.hidden) { setTimeout(tick, every); return; }
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) { if (html !== null) { el.innerHTML = html; el.setAttribute("data-refreshed", Date.now()); } })
        .catch(function () {})
        .then(function () { setTimeout(tick, every); });
    }
    setTimeout(tick, every);
  }

  function tryIt(form) {
    var out = document.getElementById("try-response");
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var record = {}, headers = { "Content-Type": "application/json" };
      Array.prototype.forEach.call(form.querySelectorAll("input"), function (input) {
        if (input.name === "__api_key") { if (input.value) headers["X-API-Key"] = input.value; return; }
        var v = input.value.trim();
        if (v === "") { record[input.name] = null; return; }
        record[input.name] = input.getAttribute("data-kind") === "number" && !isNaN(Number(v)) ? Number(v) : v;
      });
      out.textContent = "sending...";
      fetch(form.getAttribute("data-endpoint"), { method: "POST", headers: headers, body: JSON.stringify({ records: [record] }) })
        .then(function (r) { return r.text().then(function (t) { return r.status + " " + t; }); })
        .then(function (t) {
          try { var i = t.indexOf(" "); t = t.slice(0, i) + "\n" + JSON.stringify(JSON.parse(t.slice(i + 1)), null, 2); } catch (e) {}
          out.textContent = t;
        })
        .catch(function (e) { out.textContent = "request failed: " + e; });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("[data-poll]"), poll);
    var form = document.getElementById("try");
    if (form) tryIt(form);
  });
})();
