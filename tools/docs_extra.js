// Extra script of the offline docs site built by tools/build_docs.py (MkDocs Material).
// Browsers refuse the search's web worker on file:// pages, so hide the search box there instead of showing one
// that never answers; served over http(s) (e.g. GitHub Pages) search works as usual.
if (location.protocol === "file:") {
  document.documentElement.classList.add("nb-file-protocol");
}
