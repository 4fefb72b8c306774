#!/usr/bin/env python
"""Build the docs site from the notebooks in `nbs/`, offline and without Quarto.

    python tools/build_docs.py                  # every notebook in nbs/ -> _docs/ (open _docs/index.html)
    python tools/build_docs.py --out /tmp/site  # somewhere else
    python tools/build_docs.py --nbs /tmp/nbs   # other notebooks (still using this project's settings)

Each notebook goes through nbdev's own documentation processors (`nbdev.processors.FilterDefaults`: frontmatter,
`show_doc` rendering, removal of `#| hide`/exported cells, doc links), exactly what `nbdev-docs` hands to Quarto. The
processed notebook is then written as a Markdown page (honouring Quarto's `echo`, `output`, `include` and
`code-fold` cell options; saved outputs become text, tables and image files) and MkDocs Material renders the site
(`mkdocs.yml`). The site uses relative links and no CDN, so it works from `file://`.

Where Quarto is installed, `nbdev-docs` builds nbdev's standard site from the same notebooks (`nbs/_quarto.yml`).
Processed notebooks are cached in `_proc/mkdocs/`, keyed on their content and on the library's.
"""
import argparse, base64, hashlib, json, os, re, shutil, sys, tempfile, time, warnings
from pathlib import Path
from urllib.parse import urljoin

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT/'_proc'/'mkdocs'
EXTRA = [Path(__file__).with_name(f) for f in ('docs_extra.css', 'docs_extra.js')]  # see mkdocs.yml
_re_ansi = re.compile(r'\x1B(?:[@-Z\\-_]|\[[0-?]*[ -/]*[@-~])')
# Python's warning lines, `/where/it/ran/module.py:12: UserWarning: msg` then the indented source line: a reader needs
# the category and the message, not the machine's path
_re_warn = re.compile(r'^[^\n]*?\.py:\d+: (\w*Warning): (.*?)\n(?:[ \t]+[^\n]*\n?)?', re.M | re.S)

# ----------------------------------------------------------------------------------------------------------------
# nbdev: configuration, doc links, notebook processing

def get_cfg():
    from nbdev.config import get_config
    return get_config(ROOT)

def doc_base(cfg=None) -> str:
    "Absolute URL of the hosted docs, as nbdev writes it into doc links (e.g. 'https://user.github.io/repo/')"
    cfg = cfg or get_cfg()
    return urljoin(cfg.doc_host + '/', cfg.doc_baseurl).rstrip('/') + '/'

def ensure_lookup():
    "Make nbdev's doc links (`NbdevLookup`) know this project's symbols even when it is not pip-installed"
    import nbdev.doclinks as dl
    from importlib.metadata import EntryPoint
    if getattr(dl, '_fastai_mtl_patched', False): return
    cfg = get_cfg()
    name, orig = cfg.lib_name, dl.entry_points
    def entry_points(**kw):
        eps = list(orig(**kw))
        if kw.get('group') == 'nbdev' and not any(o.name == name for o in eps):
            eps.append(EntryPoint(name=name, value=f'{cfg.lib_path.name}._modidx:d', group='nbdev'))
        return eps
    if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))
    dl.entry_points = entry_points
    dl._build_lookup_table.cache_clear()
    dl._fastai_mtl_patched = True

def _lib_key(cfg) -> str:
    "Hash of what a processed notebook depends on besides itself: settings, library source, nbdev and this script"
    import nbdev
    h = hashlib.sha256(nbdev.__version__.encode())
    for f in [cfg.config_file, Path(__file__), *sorted(cfg.lib_path.glob('**/*.py'))]:
        h.update(str(f.relative_to(ROOT) if f.is_relative_to(ROOT) else f).encode()); h.update(f.read_bytes())
    return h.hexdigest()

def process_nb(src:Path, cache:Path=CACHE, lib_key:str=None) -> dict:
    "`src` after nbdev's doc processors (`FilterDefaults`), as a JSON dict; cached in `cache`"
    from fastcore.nbio import read_nb
    from nbdev.processors import FilterDefaults
    src = Path(src).resolve()
    cfg = get_cfg()
    key = hashlib.sha256(src.read_bytes() + (lib_key or _lib_key(cfg)).encode() + str(src).encode()).hexdigest()
    cached = cache/f'{key}.json'
    if cached.exists():
        cached.touch()  # recently used: kept by `prune_cache`
        return json.loads(cached.read_text())
    ensure_lookup()
    nb = read_nb(src)  # sets `path_`, which the frontmatter processor needs
    old_env, old_cwd = os.environ.get('IN_TEST'), os.getcwd()
    os.environ['IN_TEST'] = '1'  # stops `nbdev_export()` cells and notebook-only side effects, as `nbdev-docs` does
    try:
        os.chdir(src.parent)
        with warnings.catch_warnings(record=True) as ws:
            warnings.simplefilter('always')  # the notebooks' own warnings (their imports) are dropped
            FilterDefaults()(nb)
        mixed = [w for w in ws if 'imports and other code' in str(w.message)]
        if mixed: print(f'  note: {src.name}: {len(mixed)} cell(s) mix imports with other code, so nbdev runs them to '
                        'build the docs (nbdev FAQ); put imports in their own cell', file=sys.stderr)
    finally:
        os.chdir(old_cwd)
        if old_env is None: os.environ.pop('IN_TEST', None)
        else: os.environ['IN_TEST'] = old_env
    d = json.loads(json.dumps(nb, default=str))
    d['frontmatter_'] = getattr(nb, 'frontmatter_', {})
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f'.{os.getpid()}.tmp')
    tmp.write_text(json.dumps(d)); tmp.replace(cached)
    return d

def prune_cache(cache:Path=CACHE, days:float=2):
    "Delete processed notebooks not used for `days`"
    for f in cache.glob('*.json'):
        if time.time() - f.stat().st_mtime > days*86400: f.unlink(missing_ok=True)

# ----------------------------------------------------------------------------------------------------------------
# Pages: which notebooks, where their pages go

def list_nbs(nbs:Path) -> list:
    "Notebooks in `nbs` that become pages, as nbdev finds them (skips names starting with `_` or `.`)"
    from nbdev.doclinks import nbglob
    return sorted(nbglob(nbs, func=Path, file_glob='*.ipynb', skip_folder_re=r'^[_.]'),
                  key=lambda p: [('00' if p.stem == 'index' and q == p.name else q) for q in p.relative_to(nbs).parts])

def page_path(nb:Path, nbs:Path) -> Path:
    "Markdown page of notebook `nb` inside the docs source, named as nbdev/Quarto names the HTML (`00_core` -> `core`)"
    from nbdev.config import nbpath2html
    return nbpath2html(nb.relative_to(nbs)).with_suffix('.md')

def relpath(target:str, page:Path) -> str:
    "Relative link from `page` to `target`, both paths relative to the docs root"
    return os.path.relpath(target, page.parent.as_posix() or '.').replace(os.sep, '/')

# ----------------------------------------------------------------------------------------------------------------
# Processed notebook -> Markdown

def _text(s): return ''.join(s) if isinstance(s, list) else (s or '')

def fence(code:str, lang:str='', attrs:str='') -> str:
    "`code` as a fenced block longer than any backtick run inside it"
    n = max([3] + [len(m) + 1 for m in re.findall(r'`{3,}', code)])
    info = f'{{ .{lang} {attrs} }}' if attrs else lang
    return f"{'`'*n}{info}\n{code.rstrip()}\n{'`'*n}"

def slugify(text:str) -> str:
    "Heading id as pandoc/Quarto makes it (keeps `_`, `-`, `.`), which is what nbdev's doc links point to"
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', text)   # links -> their text
    text = re.sub(r'<[^>]+>', '', text).replace('`', '')
    text = text.replace('\\_', '_').replace('*', '')
    text = re.sub(r'[^\w\s.-]', '', text).strip().lower()
    text = re.sub(r'\s+', '-', text)
    text = re.sub(r'^[^a-z]+', '', text)
    return text or 'section'

def _escape_underscores(md:str) -> str:
    "Escape `_` outside code spans and link targets, so `Task.__init__` in a heading is not read as bold"
    parts = re.split(r'(`+[^`]*`+|\]\([^)]*\))', md)
    return ''.join(p if i % 2 else re.sub(r'(?<!\\)_', r'\\_', p) for i, p in enumerate(parts))

_re_heading = re.compile(r'^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$')
_re_link = re.compile(r'(!?\[(?:[^\[\]]|\[[^\]]*\])*\]\()(<[^>]*>|[^)\s]+)((?:\s+"[^"]*")?\))')
_re_href = re.compile(r'''((?:href|src)=)(["'])(.*?)\2''')

class PageWriter:
    "Writes one processed notebook as a Markdown page (plus its image files) for MkDocs"
    def __init__(self, nb:dict, page:Path, pages:dict, base:str, lookup=None):
        "`pages`: {notebook path: page path}, relative to `nbs/` and the docs root; `base`: hosted docs URL"
        self.nb, self.page, self.base, self.lookup = nb, Path(page), base, lookup
        self.nb_pages = {Path(k).as_posix(): Path(v).as_posix() for k, v in pages.items()}
        self.md_pages = set(self.nb_pages.values())
        self.files, self.ids, self.anchors, self.n_img = {}, {}, set(), 0
        self.fm = nb.get('frontmatter_') or {}
        self.lang = nb.get('metadata', {}).get('kernelspec', {}).get('language', 'python')

    # links ----------------------------------------------------------------------------------------------------
    def local_target(self, url:str):
        "Docs-root-relative `page.md#anchor` for a link to one of our pages (hosted URL, `.html`/`.ipynb`/`.md` name)"
        if url.startswith(self.base): path, hosted = url[len(self.base):], True
        elif re.match(r'^[a-z][a-z0-9+.-]*:|^/|^#', url, re.I) or not url: return None
        else: path, hosted = url, False
        path, _, anchor = path.partition('#')
        if not path: return None
        if not hosted: path = os.path.normpath((self.page.parent/path).as_posix()).replace(os.sep, '/')
        md = self.nb_pages.get(path) or re.sub(r'\.(html|ipynb)$', '.md', path)
        if md not in self.md_pages: return None
        return md + ('#' + anchor if anchor else '')

    def fix_links(self, md:str) -> str:
        "Point links to our hosted docs or to notebooks at the Markdown pages, relatively"
        def _md(m):
            t = self.local_target(m.group(2).strip('<>'))
            return m.group(0) if t is None else m.group(1) + relpath(t.partition('#')[0], self.page) + (
                '#' + t.partition('#')[2] if '#' in t else '') + m.group(3)
        return _re_href.sub(self._fix_href, _re_link.sub(_md, md))

    def linkify(self, md:str) -> str: return self.lookup.linkify(md) if self.lookup and md else md

    # markdown -------------------------------------------------------------------------------------------------
    def heading_ids(self, md:str) -> str:
        "Give every heading outside code fences an explicit Quarto-style id (deduplicated like pandoc)"
        out, fence_ = [], None
        for line in md.split('\n'):
            m = re.match(r'^\s*(`{3,}|~{3,})', line)
            if m:
                if fence_ is None: fence_ = m.group(1)
                elif m.group(1).startswith(fence_): fence_ = None
            elif fence_ is None and (h := _re_heading.match(line)) and not h.group(2).rstrip().endswith('}'):
                slug = slugify(h.group(2))
                n = self.ids.get(slug, 0); self.ids[slug] = n + 1
                if n: slug = f'{slug}-{n}'
                self.anchors.add(slug)
                sid = _escape_underscores(slug) if re.search(r'(^|\W)_|_($|\W)', slug) else slug  # `__init__`
                line = f'{h.group(1)} {_escape_underscores(h.group(2))} {{#{sid}}}'
            out.append(line)
        return '\n'.join(out)

    _callouts = dict(note='note', tip='tip', warning='warning', important='danger', caution='warning')
    def quarto_divs(self, md:str) -> str:
        "Quarto fenced divs: callouts become admonitions, other divs keep only their content"
        out, stack = [], []
        for line in md.split('\n'):
            m = re.match(r'^\s*(:{3,})\s*(\{[^}]*\}|[\w-]+)?\s*$', line)
            if m and m.group(2):
                c = re.search(r'\.callout-(\w+)', m.group(2) or '')
                if c:
                    title = re.search(r'title="([^"]*)"', m.group(2))
                    kind = self._callouts.get(c.group(1), 'note')
                    mark = '???' if 'collapse="true"' in m.group(2) else '!!!'
                    out.append(f'{"    "*len([s for s in stack if s])}{mark} {kind}' + (f' "{title.group(1)}"' if title else ''))
                    stack.append(True)
                else: stack.append(False)
                continue
            if m and stack:
                stack.pop(); out.append(''); continue
            out.append('    '*len([s for s in stack if s]) + line if line.strip() else line)
        return '\n'.join(out)

    def markdown(self, md:str) -> str: return self.heading_ids(self.fix_links(self.quarto_divs(md)))

    # outputs --------------------------------------------------------------------------------------------------
    def add_file(self, data:bytes, ext:str) -> str:
        "Store an image for this page; returns its path relative to the page"
        self.n_img += 1
        rel = f'{self.page.stem}_files/figure-{self.n_img}.{ext}'
        self.files[(self.page.parent/rel).as_posix()] = data
        return rel

    def output(self, o:dict, asis=False) -> str:
        typ = o.get('output_type')
        if typ == 'stream':
            txt = _re_ansi.sub('', _text(o.get('text')))
            if o.get('name') == 'stderr': txt = _re_warn.sub(r'\1: \2\n', txt)
            if not txt.strip(): return ''
            return fence(txt, 'text', '.nb-output' + (' .nb-stderr' if o.get('name') == 'stderr' else ''))
        if typ == 'error':
            tb = _re_ansi.sub('', '\n'.join(o.get('traceback') or [f"{o.get('ename')}: {o.get('evalue')}"]))
            return fence(tb, 'text', '.nb-output .nb-error')
        d = o.get('data', {})
        if 'text/markdown' in d:
            md = self.markdown(_text(d['text/markdown']))  # already linkified by nbdev's `add_links`
            return md if asis else f'<div class="nb-output nb-markdown" markdown>\n\n{md}\n\n</div>'
        for mime, ext in (('image/png', 'png'), ('image/jpeg', 'jpg'), ('image/gif', 'gif'), ('image/svg+xml', 'svg')):
            if mime in d:
                data = _text(d[mime]).encode() if ext == 'svg' else base64.b64decode(_text(d[mime]))
                rel = self.add_file(data, ext)
                meta = (o.get('metadata') or {}).get(mime) or {}  # retina figures say their display size here
                size = ''.join(f' {k}="{int(meta[k])}"' for k in ('width', 'height') if isinstance(meta.get(k), (int, float)))
                return f'![]({rel}){{ .nb-image{size} }}'
        if 'text/html' in d:
            html = _text(d['text/html']).strip()
            html = re.sub(r'<script\b.*?</script>', '', html, flags=re.S | re.I)  # no scripts from outputs
            html = _re_href.sub(self._fix_href, html)
            html = re.sub(r'\n\s*\n', '\n', html)  # a blank line would end Markdown's raw HTML block
            return f'<div class="nb-output nb-html">\n{html}\n</div>'
        if 'text/plain' in d: return fence(_re_ansi.sub('', _text(d['text/plain'])), 'text', '.nb-output')
        return ''

    def _fix_href(self, m):
        "An HTML `href`/`src` to one of our pages, made relative and pointing at the built `.html`"
        t = self.local_target(m.group(3))
        if t is None: return m.group(0)
        p, _, a = t.partition('#')
        return f'{m.group(1)}{m.group(2)}{relpath(p[:-3] + ".html", self.page)}{"#"+a if a else ""}{m.group(2)}'

    # cells ----------------------------------------------------------------------------------------------------
    @staticmethod
    def directives(src:str):
        "Split Quarto cell options (`#| key: value` lines opening the cell) from the code"
        opts, lines = {}, src.split('\n')
        while lines and re.match(r'^\s*#\|', lines[0]):
            if m := re.match(r'^\s*#\|\s*([\w-]+)\s*:\s*(.*?)\s*$', lines.pop(0)): opts[m.group(1)] = m.group(2).strip('"\'')
        return opts, '\n'.join(lines).strip('\n')

    def code_cell(self, cell:dict) -> str:
        opts, src = self.directives(_text(cell.get('source')))
        if opts.get('include') == 'false': return ''
        parts = []
        lang = cell.get('metadata', {}).get('language') or self.lang
        if src.strip() and opts.get('echo') != 'false':
            code = fence(src, lang)
            fold = opts.get('code-fold')
            if fold in ('true', 'show'):
                summary = opts.get('code-summary', 'Code')
                code = f'???{"+" if fold == "show" else ""} source "{summary}"\n\n' + '\n'.join(
                    '    ' + l if l else l for l in code.split('\n'))
            parts.append(code)
        if opts.get('output') != 'false':
            parts += [self.output(o, asis=opts.get('output') == 'asis') for o in cell.get('outputs', [])]
        return '\n\n'.join(p for p in parts if p)

    def md_cell(self, cell:dict) -> str:
        src = _text(cell.get('source'))
        for name, data in (cell.get('attachments') or {}).items():
            mime, b64 = next(iter(data.items()))
            rel = self.add_file(base64.b64decode(_text(b64)), mime.split('/')[-1].replace('svg+xml', 'svg'))
            src = src.replace(f'attachment:{name}', rel)
        return self.markdown(src)

    def render(self) -> str:
        title = self.fm.get('title') or self.page.stem
        out = [f'---\ntitle: {json.dumps(str(title))}\n---', self.heading_ids(f'# {title}')]
        if desc := self.fm.get('description'):
            out.append(f'<p class="nb-description" markdown>{self.fix_links(self.linkify(str(desc)))}</p>')
        for cell in self.nb['cells']:
            typ = cell.get('cell_type')
            if typ == 'markdown': out.append(self.md_cell(cell))
            elif typ == 'code': out.append(self.code_cell(cell))
            elif typ == 'raw':
                fmt = cell.get('metadata', {}).get('format', cell.get('metadata', {}).get('raw_mimetype', ''))
                if 'html' in fmt or 'markdown' in fmt: out.append(_text(cell.get('source')))
        return '\n\n'.join(o for o in out if o and o.strip()) + '\n'

def nb2md(nb:dict, page:Path, pages:dict, base:str, lookup=None):
    "Markdown of the processed notebook `nb` for `page`, the files (images) it needs and its heading ids"
    w = PageWriter(nb, page, pages, base, lookup)
    return w.render(), w.files, w.anchors

_re_md_anchor = re.compile(r'(\]\()([^)\s#]*\.md)#([^)\s]+)(\))')

def fix_anchors(md:str, page:Path, anchors:dict) -> str:
    "Point links to a heading that does not exist on one of our pages at the closest one (`#task.setup` -> `#task`)"
    def _f(m):
        ids = anchors.get(os.path.normpath((Path(page).parent/m.group(2)).as_posix()))
        if ids is None: return m.group(0)
        a = m.group(3)
        while a not in ids and '.' in a: a = a.rsplit('.', 1)[0]
        return m.group(1) + m.group(2) + ('#' + a if a in ids else '') + m.group(4)
    return _re_md_anchor.sub(_f, md)

# ----------------------------------------------------------------------------------------------------------------
# The site

def sidebar(nbs:Path) -> list:
    "The grouped navigation of `nbs/sidebar.yml` (Quarto's `website.sidebar.contents`), or None when there is none"
    f = Path(nbs)/'sidebar.yml'
    if not f.exists(): return None
    import yaml
    return yaml.safe_load(f.read_text())['website']['sidebar']['contents']

def nav_for(nbs:Path, pages:dict, titles:dict) -> list:
    "MkDocs nav: the sections of `nbs/sidebar.yml` when there is one (notebooks it leaves out go last), else index first and the notebooks in name order"
    side = sidebar(nbs)
    if side is not None:
        listed = []
        def _entry(o):
            if isinstance(o, dict) and 'section' in o: return {o['section']: [_entry(c) for c in o['contents']]}
            nb = o if isinstance(o, str) else o.get('href')
            if nb not in pages: raise BuildError(f'sidebar.yml names {nb!r}, which is not a notebook of {nbs}')
            listed.append(nb)
            return {titles[nb]: pages[nb].as_posix()}
        nav = [_entry(o) for o in side]
        return nav + [{titles[nb]: pages[nb].as_posix()} for nb in pages if nb not in listed]
    nav = []
    for nb in pages:
        parts = list(Path(nb).parts[:-1])
        level = nav
        for d in parts:
            name = re.sub(r'^\d+_', '', d).replace('_', ' ').title()
            sec = next((o for o in level if isinstance(o, dict) and name in o), None)
            if sec is None: sec = {name: []}; level.append(sec)
            level = sec[name]
        level.append({titles[nb]: pages[nb].as_posix()})
    return nav

class BuildError(Exception): "A notebook or the site could not be built"

def build(nbs:Path=None, out:Path=None, quiet=False, md_dir:Path=None) -> Path:
    "Process every notebook in `nbs`, write Markdown pages, render the site into `out` with MkDocs; returns `out`"
    from mkdocs.config import load_config
    from mkdocs.commands.build import build as mk_build
    t0 = time.time()
    cfg = get_cfg()
    nbs = Path(nbs or cfg.nbs_path).resolve()
    out = Path(out or cfg.doc_path).resolve()
    if out in (ROOT, *ROOT.parents, nbs, *nbs.parents) or (out.is_dir() and any(out.iterdir()) and not (out/'index.html').exists()):
        raise BuildError(f'refusing to build into {out}: MkDocs empties it first, and it is not a previous build of the site')
    fns = list_nbs(nbs)
    if not fns: raise BuildError(f'no notebooks in {nbs}')
    ensure_lookup()
    from nbdev.doclinks import NbdevLookup
    lookup, base, key = NbdevLookup(), doc_base(cfg), _lib_key(cfg)
    pages = {fn.relative_to(nbs).as_posix(): page_path(fn, nbs) for fn in fns}
    dup = {p for p in pages.values() if list(pages.values()).count(p) > 1}
    if dup: raise BuildError(f'two notebooks would make the same page(s): {sorted(map(str, dup))}')
    tmp = None
    if md_dir is None: md_dir = Path(tmp := tempfile.mkdtemp(prefix='fastai_mtl_docs_'))
    else: shutil.rmtree(md_dir, ignore_errors=True); md_dir.mkdir(parents=True)
    try:
        titles, mds, anchors = {}, {}, {}
        for fn in fns:
            t = time.time()
            rel = fn.relative_to(nbs).as_posix()
            try: nb = process_nb(fn, lib_key=key)
            except Exception as e:
                cause = f'\n{type(e.__cause__).__name__}: {e.__cause__}' if e.__cause__ and str(e.__cause__) not in str(e) else ''
                raise BuildError(f'nbdev could not process {fn}:\n{e}{cause}') from e
            mds[rel], files, anchors[pages[rel].as_posix()] = nb2md(nb, pages[rel], pages, base, lookup)
            titles[rel] = str((nb.get('frontmatter_') or {}).get('title') or pages[rel].stem)
            for p, data in files.items(): (md_dir/p).parent.mkdir(parents=True, exist_ok=True); (md_dir/p).write_bytes(data)
            if not quiet: print(f'  {rel} -> {pages[rel].with_suffix(".html")} ({time.time()-t:.1f}s)', flush=True)
        for rel, md in mds.items():
            dst = md_dir/pages[rel]
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(fix_anchors(md, pages[rel], anchors))
        if 'index.md' not in {p.as_posix() for p in pages.values()}:  # no index.ipynb: a page listing the others
            (md_dir/'index.md').write_text(f'# {cfg.title}\n\n{cfg.description}\n\n' + ''.join(
                f'- [{titles[k]}]({v.as_posix()})\n' for k, v in pages.items()))
            pages, titles = {'index.ipynb': Path('index.md'), **pages}, {'index.ipynb': cfg.title, **titles}
        # other files next to the notebooks (images linked from prose); Quarto/nbdev config files stay out
        for f in nbs.rglob('*'):
            r = f.relative_to(nbs)
            if (f.is_file() and f.suffix not in ('.ipynb', '.yml', '.yaml', '.qmd', '.css')
                and not any(p.startswith(('.', '_')) for p in r.parts)):
                (md_dir/r).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(f, md_dir/r)
        for f in EXTRA: shutil.copy2(f, md_dir/f.name)
        conf = load_config(str(ROOT/'mkdocs.yml'), docs_dir=str(md_dir), site_dir=str(out),
                           nav=nav_for(nbs, pages, titles), site_description=cfg.description)
        import logging
        logging.getLogger('mkdocs').setLevel(logging.WARNING)
        mk_build(conf)
        for f in ('404.html', 'sitemap.xml', 'sitemap.xml.gz'):  # root-absolute links / URLs: wrong offline
            (out/f).unlink(missing_ok=True)
    finally:
        if tmp: shutil.rmtree(tmp, ignore_errors=True)
    prune_cache()
    if not quiet: print(f'Built {len(fns)} pages into {out} in {time.time()-t0:.1f}s: open {out/"index.html"}')
    return out

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--nbs', type=Path, help='folder of notebooks (default: nbs/)')
    p.add_argument('--out', type=Path, help='where the site goes (default: _docs/)')
    p.add_argument('--md', type=Path, help='also keep the generated Markdown pages in this folder')
    p.add_argument('--force', action='store_true', help='ignore the cache of processed notebooks')
    p.add_argument('-q', '--quiet', action='store_true')
    a = p.parse_args()
    if a.force: shutil.rmtree(CACHE, ignore_errors=True)
    os.chdir(ROOT)
    try: build(a.nbs, a.out, quiet=a.quiet, md_dir=a.md)
    except BuildError as e: sys.exit(f'build_docs: {e}')

if __name__ == '__main__': main()
