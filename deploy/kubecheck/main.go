// kubecheck decodes rendered Kubernetes manifests (a YAML stream, e.g. `helm template`'s output)
// strictly into the Kubernetes API's own Go types: a field the API does not have (a misspelt or
// misplaced one, which a cluster would drop or refuse), a duplicate field or a value of the
// wrong type is an error naming the object and the field. It needs no cluster. Kinds it does not
// know the types of (custom resources such as ServiceMonitor) are listed as not checked.
//
//	helm template ... | kubecheck
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// The kinds the chart renders, by apiVersion and kind.
var types = map[string]func() any{
	"v1/ConfigMap":                           func() any { return &corev1.ConfigMap{} },
	"v1/Service":                             func() any { return &corev1.Service{} },
	"v1/ServiceAccount":                      func() any { return &corev1.ServiceAccount{} },
	"apps/v1/Deployment":                     func() any { return &appsv1.Deployment{} },
	"policy/v1/PodDisruptionBudget":          func() any { return &policyv1.PodDisruptionBudget{} },
	"autoscaling/v2/HorizontalPodAutoscaler": func() any { return &autoscalingv2.HorizontalPodAutoscaler{} },
}

type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
}

func main() {
	in := io.Reader(os.Stdin)
	if len(os.Args) > 1 {
		f, err := os.Open(os.Args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, "kubecheck:", err)
			os.Exit(2)
		}
		defer f.Close()
		in = f
	}
	checked, unchecked, problems := check(in)
	for _, p := range problems {
		fmt.Fprintln(os.Stderr, "kubecheck:", p)
	}
	sort.Strings(unchecked)
	fmt.Printf("kubecheck: %d objects decoded strictly", checked)
	if len(unchecked) > 0 {
		fmt.Printf("; not checked (no API types here): %s", strings.Join(unchecked, ", "))
	}
	fmt.Println()
	if len(problems) > 0 {
		os.Exit(1)
	}
}

func check(in io.Reader) (checked int, unchecked []string, problems []string) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(in))
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("reading the stream: %v", err))
			return
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		var h header
		if err := yaml.Unmarshal(doc, &h); err != nil {
			problems = append(problems, fmt.Sprintf("not a manifest: %v", err))
			continue
		}
		what := fmt.Sprintf("%s %s", h.Kind, h.Metadata.Name)
		newObject, ok := types[h.APIVersion+"/"+h.Kind]
		if !ok {
			unchecked = append(unchecked, fmt.Sprintf("%s (%s)", what, h.APIVersion))
			continue
		}
		if err := yaml.UnmarshalStrict(doc, newObject()); err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", what, err))
			continue
		}
		checked++
	}
}

func stripComments(doc []byte) []byte {
	var out bytes.Buffer
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			out.Write(line)
			out.WriteByte('\n')
		}
	}
	return out.Bytes()
}
