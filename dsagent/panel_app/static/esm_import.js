// Panel loads its ESM components (panel-material-ui's) through `window.importShim`, which es-module-shims
// provides. Its shim mode fetches and rewrites every module and probes the browser with inline scripts that
// the dashboard's Content-Security-Policy refuses; the browser's own dynamic import does all these pages
// need (one bundled module, no import maps). See docs/architecture.md, "The frame".
(function () {
  function load(url) {
    // import() in a classic script resolves against the script's own URL, Panel means the page's
    return import(new URL(url, document.baseURI).href);
  }
  load.addImportMap = function () {};
  window.importShim = load;
})();
