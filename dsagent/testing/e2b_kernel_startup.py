"""IPython startup file of the loopback E2B server's kernels: the result types E2B's template adds.

Copied into ``/root/.ipython/profile_default/startup/`` of the loopback
sandbox (where E2B's code-interpreter template keeps its own startup scripts)
and run by every kernel at start. Written here from what the template does
(``template/startup_scripts`` in e2b-dev/code-interpreter), not copied:

- ``e2b/data``: a pandas DataFrame's columns as lists (``to_dict(orient="list")``,
  timestamps as ISO text);
- ``e2b/chart``: a matplotlib figure's elements, from ``e2b_charts.chart_figure_to_dict``
  (the PyPI package E2B's template installs and calls; checked against the real
  server: a hand-written extractor differed in titles, groups, date axes, units and box plots);
- ``application/json`` for dicts and lists (through orjson, numpy values and
  non-str keys included), with ``{"expanded": True}`` metadata;
- ``PIL.Image.Image.save(path)`` also displays the image, and PIL's viewer is a no-op.

Each formatter looks at ``sys.modules`` first, so displaying an int never imports pandas or matplotlib.
Everything is defined inside one function: a startup file runs in the user's namespace.
"""

def _e2b_loopback_startup():
    import sys

    from IPython import get_ipython
    from IPython.core.formatters import BaseFormatter, JSONFormatter
    from traitlets import ObjectName, Unicode

    class _E2BDataFormatter(BaseFormatter):
        format_type = Unicode("e2b/data")
        print_method = ObjectName("_repr_e2b_data_")
        _return_type = (dict, str)

        def __call__(self, obj):
            pandas = sys.modules.get("pandas")
            if pandas is None or not isinstance(obj, pandas.DataFrame):
                return super().__call__(obj)
            columns = obj.to_dict(orient="list")
            return {
                str(name): [v.isoformat() if isinstance(v, pandas.Timestamp) else v for v in values]
                for name, values in columns.items()
            }

    class _E2BChartFormatter(BaseFormatter):
        format_type = Unicode("e2b/chart")
        print_method = ObjectName("_repr_e2b_chart_")
        _return_type = (dict, str)

        def __call__(self, obj):
            if sys.modules.get("matplotlib") is None:
                return super().__call__(obj)
            from matplotlib.figure import Figure

            if not isinstance(obj, Figure):
                return super().__call__(obj)
            from e2b_charts import chart_figure_to_dict  # E2B's own extractor (PyPI), as the template uses it

            try:
                return chart_figure_to_dict(obj)
            except Exception:
                return {}

    class _E2BJSONFormatter(JSONFormatter):
        def __call__(self, obj):
            if isinstance(obj, (list, dict)):
                try:
                    import orjson

                    options = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
                    return orjson.loads(orjson.dumps(obj, option=options)), {"expanded": True}
                except (ImportError, TypeError):
                    pass
            return super().__call__(obj)

    def _install():
        ip = get_ipython()
        if ip is None:
            return
        formatters = ip.display_formatter.formatters
        formatters["e2b/data"] = _E2BDataFormatter(parent=ip.display_formatter)
        formatters["e2b/chart"] = _E2BChartFormatter(parent=ip.display_formatter)
        formatters["application/json"] = _E2BJSONFormatter(parent=ip.display_formatter)
        try:
            from PIL import Image, ImageShow
        except ImportError:
            return
        ImageShow.UnixViewer.show_file = lambda self, path, **options: 0  # no display in a sandbox
        original_save = Image.Image.save

        def save(image, fp, format=None, **params):
            if isinstance(fp, str):
                from IPython.display import display

                display(image)
            return original_save(image, fp, format, **params)

        Image.Image.save = save

    _install()


_e2b_loopback_startup()
del _e2b_loopback_startup
