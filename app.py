"""jams-dr Chalice app: wiring only. Logic lives in chalicelib/, one blueprint per trigger family."""

from chalice.app import Chalice

from chalicelib.handlers import detection as detection_handlers
from chalicelib.handlers import snapshots
from chalicelib.handlers import workflow as workflow_handlers
from chalicelib.observability import powertools_middleware

app = Chalice(app_name="jams-dr")
app.register_middleware(powertools_middleware, "all")
app.register_blueprint(detection_handlers.bp)
app.register_blueprint(snapshots.bp)
app.register_blueprint(workflow_handlers.bp)
