package server

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc/codes"

	"github.com/mandate-authz/mandate/engine"
)

// metrics are the server's Prometheus metrics, in a registry of its own so
// that several servers in one process (tests) do not collide.
type metrics struct {
	reg       *prometheus.Registry
	requests  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	decisions *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mandate", Name: "requests_total",
			Help: "API calls by method, transport (grpc or rest) and gRPC status code.",
		}, []string{"method", "transport", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "mandate", Name: "request_duration_seconds",
			Help:    "API call latency by method and transport.",
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"method", "transport"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mandate", Name: "check_decisions_total",
			Help: "Check and CheckBulk answers by outcome (allowed, denied, conditional).",
		}, []string{"decision"}),
	}
	m.reg.MustRegister(m.requests, m.latency, m.decisions,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) observe(method, transport string, code codes.Code, d time.Duration) {
	m.requests.WithLabelValues(method, transport, code.String()).Inc()
	m.latency.WithLabelValues(method, transport).Observe(d.Seconds())
}

func (m *metrics) decision(d engine.Decision) {
	m.decisions.WithLabelValues(d.String()).Inc()
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
