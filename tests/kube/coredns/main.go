// CoreDNS with only the plugins the test cluster and the mesh on one
// machine use, built the way CoreDNS documents external builds: a main
// package that imports coremain and the chosen plugins, and sets their
// order. (The upstream main imports every plugin, cloud DNS SDKs included,
// which doubles the build.)
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/file"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
	_ "github.com/coredns/coredns/plugin/root"
)

// The plugins in the order upstream's plugin.cfg runs them.
var directives = []string{
	"root", "reload", "ready", "health", "prometheus", "errors", "log",
	"cache", "hosts", "kubernetes", "file", "loop",
}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
