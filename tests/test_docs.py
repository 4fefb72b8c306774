"""The docs site (tools/build_docs.py) builds offline from every notebook in nbs/, and hangs together.

Checks on the built HTML: each notebook has its page, every page is reachable from index.html by following links,
and no link to a local page, anchor, stylesheet, script or image is broken.
"""
import importlib.util, os, re
from collections import deque
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse
import pytest

from conftest import ROOT

def _load_build_docs():
    spec = importlib.util.spec_from_file_location('build_docs', ROOT/'tools'/'build_docs.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

bd = _load_build_docs()

class _Page(HTMLParser):
    "Links (`href`/`src`) and element ids of one HTML page"
    def __init__(self, text):
        super().__init__(); self.links, self.ids = [], set(); self.feed(text)
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ('id', 'name') if tag == 'a' else ('id',):
            if a.get(k): self.ids.add(a[k])
        for k in ('href', 'src'):
            if a.get(k) is not None and not (tag == 'link' and 'canonical' in (a.get('rel') or '')): self.links.append(a[k])

def parse_site(site:Path) -> dict:
    "{html file: _Page} for every HTML file of the site"
    return {f: _Page(f.read_text(encoding='utf-8')) for f in site.rglob('*.html')}

def local_target(src:Path, link:str):
    "`(file, anchor)` a link on page `src` points to inside the site, or None for external links"
    u = urlparse(link)
    if u.scheme or u.netloc or link.startswith(('//', 'mailto:', 'javascript:', 'data:')): return None
    path, anchor = urldefrag(link)
    f = (src.parent/unquote(path)).resolve() if path else src
    return f, unquote(anchor)

def broken_links(site:Path, pages:dict=None) -> list:
    "Every local link of the site whose file, or anchor on an HTML page, does not exist"
    pages = pages or parse_site(site)
    bad = []
    for f, p in pages.items():
        for link in p.links:
            t = local_target(f, link)
            if t is None: continue
            tgt, anchor = t
            if tgt.is_dir(): tgt = tgt/'index.html'
            if not tgt.exists(): bad.append(f'{f.relative_to(site)}: {link} (no such file)')
            elif anchor and tgt.suffix == '.html' and anchor not in pages[tgt].ids:
                bad.append(f'{f.relative_to(site)}: {link} (no id {anchor!r} on {tgt.relative_to(site)})')
    return bad

def reachable(site:Path, pages:dict=None) -> set:
    "HTML pages reachable from index.html by following links"
    pages = pages or parse_site(site)
    start = (site/'index.html').resolve()
    seen, todo = {start}, deque([start])
    while todo:
        f = todo.popleft()
        for link in pages[f].links:
            t = local_target(f, link)
            if t and t[0].suffix == '.html' and t[0].exists() and t[0] not in seen:
                seen.add(t[0]); todo.append(t[0])
    return seen

def check_site(nbs:Path, site:Path):
    "Assert `site` has a page per notebook of `nbs`, all reachable from its index, with no broken local link"
    site = site.resolve()
    want = {fn: site/bd.page_path(fn, nbs).with_suffix('.html') for fn in bd.list_nbs(nbs)}
    missing = [f'{fn.name} -> {p.relative_to(site)}' for fn, p in want.items() if not p.exists()]
    assert not missing, f'notebooks without a page: {missing}'
    pages = parse_site(site)
    unreached = sorted(str(p.relative_to(site)) for p in want.values() if p.resolve() not in reachable(site, pages))
    assert not unreached, f'pages not reachable from index.html: {unreached}'
    bad = broken_links(site, pages)
    assert not bad, f'{len(bad)} broken link(s):\n' + '\n'.join(bad[:30])

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp('site')
    bd.build(out=out, quiet=True)
    return out

def test_site(site):
    check_site(ROOT/'nbs', site)

def test_pages_content(site):
    "The core page has prose, its API reference from `show_doc`, and doc links turned into relative links"
    html = (site/'core.html').read_text(encoding='utf-8')
    assert 'id="task"' in html and 'id="is_missing"' in html           # show_doc headings, with nbdev's anchors
    assert 'href="#task"' in html or 'href="core.html#task"' in html      # `Task` in prose links to its doc
    assert 'fastai-mtl.github.io' not in re.sub(r'<link[^>]*>', '', html)  # no link to the hosted copy of our pages
    assert '#| ' not in html and 'show_doc(' not in html                  # directives and show_doc calls are gone
    assert not re.search(r'<(script|link)[^>]+(src|href)="https?://', html), 'the page loads something from the web'

# --- what a reader trips over: duplicated anchors, machine paths, stray reprs, the navigation ----------------------
_MACHINE = re.compile(r'(/work/|/home/\w|/root/|/tmp/|/private/var/|site-packages|/[\w.-]+/\.venv/|[A-Z]:\\\\Users)')
_REPRS = re.compile(r'(&lt;(Axes|Figure|matplotlib)[^&]*&gt;|np\.float64\(|np\.int64\(|tensor\(\[[^\]]*\], grad_fn)')

class _Ids(HTMLParser):
    def __init__(self, text): super().__init__(); self.ids = []; self.feed(text)
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get('id'): self.ids.append(a['id'])

def _visible_text(html:str) -> str:
    "The page's text without its <head>, scripts and link targets (where a path would be harmless)"
    html = re.sub(r'<head>.*?</head>|<script\b.*?</script>', '', html, flags=re.S)
    return re.sub(r'(href|src)="[^"]*"', '', html)

def test_no_duplicate_anchor_machine_path_or_stray_repr(site):
    bad = []
    for f in sorted(site.rglob('*.html')):
        html = f.read_text(encoding='utf-8')
        ids = _Ids(html).ids
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup: bad.append(f'{f.name}: duplicated id(s) {dup[:5]}')
        text = _visible_text(html)
        if m := _MACHINE.search(text): bad.append(f'{f.name}: a machine path ...{text[max(0, m.start()-60):m.end()+40]!r}')
        if m := _REPRS.search(text): bad.append(f'{f.name}: a stray repr {text[max(0, m.start()-40):m.end()+20]!r}')
    assert not bad, '\n'.join(bad)

def test_every_image_exists(site):
    missing = [f'{f.name}: {src}' for f in site.rglob('*.html') for src in re.findall(r'<img[^>]+src="([^"]+)"', f.read_text(encoding='utf-8'))
               if not src.startswith(('http', 'data:')) and not (f.parent/unquote(src)).exists()]
    assert not missing, missing

def test_sidebar_lists_every_notebook_once():
    side = bd.sidebar(ROOT/'nbs')
    listed = []
    def walk(o):
        if isinstance(o, dict) and 'section' in o:
            for c in o['contents']: walk(c)
        else: listed.append(o)
    for o in side: walk(o)
    nbs = sorted(p.name for p in bd.list_nbs(ROOT/'nbs'))
    assert sorted(listed) == nbs, (set(nbs) ^ set(listed))
    assert listed[0] == 'index.ipynb' and [o['section'] for o in side if isinstance(o, dict)][:2] == ['Tutorials', 'Training']

def test_grouped_navigation(site):
    html = (site/'index.html').read_text(encoding='utf-8')
    for sec in ('Tutorials', 'Training', 'Data', 'Models', 'Strategies', 'Experiments'): assert f'>{sec}<' in html or f'{sec}\n' in html, sec

def _documented_symbols() -> list:
    "`(page, anchor, name)` for what a user calls: every name in a module's `__all__`, every method patched onto a class from another module, every public method of the classes users hold (`MTLLearner`, `MTLInterpretation`)"
    import importlib, inspect
    from fastai_mtl._modidx import d
    held = {'MTLLearner', 'MTLInterpretation'}
    res = []
    for mod, syms in d['syms'].items():
        m = importlib.import_module(mod)
        public = set(getattr(m, '__all__', []))
        for sym, (url, _) in syms.items():
            parts = sym[len(mod) + 1:].split('.')
            page, _, anchor = url.partition('#')
            if len(parts) == 1 and parts[0] in public:
                if type(getattr(m, parts[0])).__module__.startswith('plum'): continue   # a `@dispatch` function: show_doc renders nothing for it, prose documents it
                res.append((page, anchor, sym))
            elif len(parts) == 2 and not parts[0].startswith('_') and not parts[1].startswith('_') \
                    and not re.match(r'(before|after)_', parts[1]):          # fastai's events of a patched callback: not API
                cls, meth = parts
                patched = cls not in public                                  # defined with @patch in this module
                if patched or (cls in held and meth in vars(getattr(m, cls, object)) and inspect.getdoc(getattr(getattr(m, cls), meth))):
                    res.append((page, anchor, sym))
    return res

def test_every_public_name_and_patched_method_has_its_doc(site):
    "`show_doc` for every public function, class, patched method and user-facing method: nbdev's anchor on its page"
    syms = _documented_symbols()
    assert len(syms) > 150 and any(s.endswith('MTLLearner.predict') for _, _, s in syms)
    ids = {}
    missing = []
    for page, anchor, sym in syms:
        f = site/page
        if f not in ids: ids[f] = _Page(f.read_text(encoding='utf-8')).ids if f.exists() else set()
        if anchor not in ids[f]: missing.append(f'{sym} (#{anchor} on {page})')
    assert not missing, f'{len(missing)} without show_doc:\n' + '\n'.join(missing)
