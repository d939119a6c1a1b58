"""jams-dr Chalice app: wiring only. Logic lives in chalicelib/, one blueprint per trigger family."""

from chalice.app import Chalice

from chalicelib.observability import powertools_middleware

app = Chalice(app_name="jams-dr")
app.register_middleware(powertools_middleware, "all")
