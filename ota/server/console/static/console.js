// EdgeFleet console: the only script the pages load (the Content-Security-Policy allows no other).
// 1. Forms with data-confirm ask before they submit.
// 2. Elements with data-poll="URL" replace their content with the fragment at URL every
//    data-interval milliseconds (live rollout progress), without reloading the page. Polling pauses
//    while a field inside has focus or text, so an operator typing a reason is not interrupted.
"use strict";

document.addEventListener("submit", function (event) {
  var form = event.target;
  if (!(form instanceof HTMLFormElement)) return;
  var question = form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) event.preventDefault();
});

function busy(element) {
  var active = document.activeElement;
  if (active && element.contains(active) && active.tagName === "INPUT") return true;
  var inputs = element.querySelectorAll("input[name=reason]");
  for (var i = 0; i < inputs.length; i++) if (inputs[i].value) return true;
  return false;
}

function poll(element) {
  var url = element.getAttribute("data-poll");
  var every = parseInt(element.getAttribute("data-interval") || "2000", 10);
  function tick() {
    if (busy(element) || document.hidden) {
      window.setTimeout(tick, every);
      return;
    }
    fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (answer) {
        if (answer.status === 401) { window.location.assign("/console/login"); return null; }
        return answer.ok ? answer.text() : null;
      })
      .then(function (html) {
        if (html !== null && !busy(element)) {
          element.innerHTML = html;
          element.setAttribute("data-updated", new Date().toISOString());
        }
      })
      .catch(function () { /* the server restarts or the network drops: try again next tick */ })
      .then(function () { window.setTimeout(tick, every); });
  }
  window.setTimeout(tick, every);
}

document.addEventListener("DOMContentLoaded", function () {
  var live = document.querySelectorAll("[data-poll]");
  for (var i = 0; i < live.length; i++) poll(live[i]);
});
