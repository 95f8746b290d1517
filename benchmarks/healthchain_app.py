"""HealthChain (optional peer for the HTTP benchmark): a one-card order-select
service. Runs in HealthChain's own virtualenv, under uvicorn:
    HC_VENV/bin/python -m uvicorn benchmarks.healthchain_app:app --workers 2"""
from healthchain.gateway import CDSHooksService, HealthChainAPI
from healthchain.models import Card, CDSRequest, CDSResponse

cds = CDSHooksService()


@cds.hook("order-select", id="mg-order-select")
def order_select(request: CDSRequest) -> CDSResponse:
    return CDSResponse(cards=[Card(summary="Check serum IgA before IVIG", indicator="warning",
                                   source={"label": "benchmark"})])


app = HealthChainAPI()
app.register_service(cds)
