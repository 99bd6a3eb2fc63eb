// tollgate portal: the only script the Content-Security-Policy allows (no inline code).
// - Monthly / yearly toggle: shows the prices of one cycle and preselects it in upgrade forms.
// - Copy buttons: copy the text of the element named by data-copy (the new key, a reference).
'use strict';
(function () {
  function setCycle(cycle) {
    document.querySelectorAll('[data-cycle-show]').forEach(function (el) {
      el.hidden = el.getAttribute('data-cycle-show') !== cycle;
    });
    document.querySelectorAll('.cycle-toggle button[data-cycle]').forEach(function (b) {
      b.setAttribute('aria-pressed', String(b.getAttribute('data-cycle') === cycle));
    });
    document.querySelectorAll('select.cycle-select').forEach(function (s) {
      s.value = cycle;
    });
  }

  document.querySelectorAll('.cycle-toggle button[data-cycle]').forEach(function (b) {
    b.addEventListener('click', function () {
      setCycle(b.getAttribute('data-cycle'));
    });
  });
  document.querySelectorAll('select.cycle-select').forEach(function (s) {
    s.addEventListener('change', function () {
      setCycle(s.value);
    });
  });

  function selectText(el) {
    var range = document.createRange();
    range.selectNodeContents(el);
    var sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
  }

  document.querySelectorAll('button[data-copy]').forEach(function (b) {
    b.addEventListener('click', function () {
      var el = document.getElementById(b.getAttribute('data-copy'));
      if (!el) {
        return;
      }
      var text = el.textContent.trim();
      var done = function () {
        b.textContent = 'Copied';
        b.classList.add('done');
      };
      var manual = function () {
        selectText(el);
        b.textContent = 'Selected: press Ctrl+C';
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, manual);
      } else {
        manual();
      }
    });
  });
})();
