// The Gateway API conformance suite, built as a test binary against the
// pinned module: tests/kube/gobuild.sh gateway-api-conformance. Weft's
// cluster test runs it with the MESH-HTTP and MESH-GRPC profiles (the
// flags are the suite's own; see tests/tests/cluster/conformance.rs).
package conformance

import (
	"testing"

	"sigs.k8s.io/gateway-api/conformance"
)

func TestConformance(t *testing.T) {
	conformance.RunConformance(t)
}
