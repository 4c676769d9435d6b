// Command cel-parity evaluates CEL expressions with cel-go, the reference implementation, over
// rows of inputs, so that the gateway's evaluator (the derived crate) can be compared with it
// value for value (tests/tests/cel_parity.rs builds and runs this program).
//
// Usage: cel-parity INPUT OUTPUT
//
// INPUT is JSON lines, in this order:
//
//	{"views": {"txn": {"amount": "double", "country": "string"}, ...}}   once, first
//	{"expr": {"name": "risk.ratio", "source": "txn.amount / 2.0", "type": "double"}}
//	...                                                                  one per expression
//	{"row": {"txn": {"amount": {"double": "3ff0000000000000"}}, ...}}
//	...                                                                  one per row
//
// Each view is declared as a variable of type map(string, dyn); a row binds every view to a map
// of its features that are available, so an input that is not is an absent key (reading it is
// cel-go's "no such key" error, and has() is false), as the gateway binds them. The environment
// is cel-go's standard library with the math and strings extensions.
//
// OUTPUT is JSON lines, one per expression in input order:
//
//	{"name": "risk.ratio", "results": [VALUE, ...]}   one VALUE per row, in row order
//	{"name": "risk.ratio", "compile_error": "..."}     when cel-go refuses the expression
//
// A VALUE (and an input value in a row) is an object with one key naming its type:
//
//	{"int": "-12"}                  decimal, exact
//	{"uint": "12"}                  decimal, exact
//	{"double": "7ff8000000000000"}  the IEEE-754 bits in hex, so NaN, -0.0 and infinities are exact
//	{"string": "..."}
//	{"bool": true}
//	{"bytes": "base64"}
//	{"timestamp": {"seconds": "-1", "nanos": 5}}  seconds since the epoch (decimal), nanos 0..1e9
//	{"duration": {"seconds": "-1", "nanos": -5}}  (results only) seconds and nanos of one sign
//	{"list": [VALUE, ...]}
//	{"null": true}
//	{"error": "cel-go's message"}   (results only)
//	{"other": "type: value"}        (results only) anything else, e.g. a map
package main

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"strconv"
	"time"
	// A time zone database when the machine has none. The parity test sets ZONEINFO to the Go
	// toolchain's, so that every machine reads the same version.
	_ "time/tzdata"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
	"cel.dev/cel-go/ext"
)

type exprDecl struct {
	Name   string `json:"name"`
	Source string `json:"source"`
	Type   string `json:"type"`
}

type inputLine struct {
	Views map[string]map[string]string         `json:"views"`
	Expr  *exprDecl                            `json:"expr"`
	Row   map[string]map[string]map[string]any `json:"row"`
}

type outputLine struct {
	Name         string `json:"name"`
	Results      []any  `json:"results,omitempty"`
	CompileError string `json:"compile_error,omitempty"`
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: cel-parity INPUT OUTPUT")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "cel-parity:", err)
		os.Exit(1)
	}
}

func run(inPath, outPath string) error {
	in, err := os.Open(inPath)
	if err != nil {
		return err
	}
	defer in.Close()

	var views map[string]map[string]string
	var exprs []exprDecl
	var rows []map[string]any
	scanner := bufio.NewScanner(in)
	scanner.Buffer(make([]byte, 1<<20), 64<<20)
	for n := 1; scanner.Scan(); n++ {
		var line inputLine
		if err := json.Unmarshal(scanner.Bytes(), &line); err != nil {
			return fmt.Errorf("line %d: %w", n, err)
		}
		switch {
		case line.Views != nil:
			views = line.Views
		case line.Expr != nil:
			exprs = append(exprs, *line.Expr)
		case line.Row != nil:
			row, err := activation(views, line.Row)
			if err != nil {
				return fmt.Errorf("line %d: %w", n, err)
			}
			rows = append(rows, row)
		default:
			return fmt.Errorf("line %d: neither views, expr nor row", n)
		}
	}
	if err := scanner.Err(); err != nil {
		return err
	}
	if views == nil {
		return fmt.Errorf("no views line")
	}

	options := []cel.EnvOption{ext.Math(), ext.Strings()}
	for name := range views {
		options = append(options, cel.Variable(name, cel.MapType(cel.StringType, cel.DynType)))
	}
	env, err := cel.NewEnv(options...)
	if err != nil {
		return err
	}

	out, err := os.Create(outPath)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(out)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	for _, e := range exprs {
		line := outputLine{Name: e.Name}
		ast, iss := env.Compile(e.Source)
		var prg cel.Program
		if iss.Err() == nil {
			prg, err = env.Program(ast)
		}
		switch {
		case iss.Err() != nil:
			line.CompileError = iss.Err().Error()
		case err != nil:
			line.CompileError = err.Error()
		default:
			line.Results = make([]any, len(rows))
			for i, row := range rows {
				val, _, err := prg.Eval(row)
				if err != nil {
					line.Results[i] = map[string]any{"error": err.Error()}
				} else {
					line.Results[i] = encode(val)
				}
			}
		}
		if err := enc.Encode(line); err != nil {
			return err
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return out.Close()
}

// activation turns a row into cel-go's variables: every declared view, as a map of the
// features the row holds.
func activation(views map[string]map[string]string, row map[string]map[string]map[string]any) (map[string]any, error) {
	vars := make(map[string]any, len(views))
	for view := range views {
		vars[view] = map[string]any{}
	}
	for view, features := range row {
		m, ok := vars[view].(map[string]any)
		if !ok {
			return nil, fmt.Errorf("row names view %q, which is not declared", view)
		}
		for feature, tagged := range features {
			v, err := decode(tagged)
			if err != nil {
				return nil, fmt.Errorf("%s.%s: %w", view, feature, err)
			}
			m[feature] = v
		}
	}
	return vars, nil
}

// decode turns a tagged input value into the Go value cel-go adapts.
func decode(tagged map[string]any) (any, error) {
	if len(tagged) != 1 {
		return nil, fmt.Errorf("a value has one key, not %d", len(tagged))
	}
	for tag, raw := range tagged {
		switch tag {
		case "int":
			return strconv.ParseInt(raw.(string), 10, 64)
		case "double":
			return decodeDouble(raw)
		case "string":
			return raw.(string), nil
		case "bool":
			return raw.(bool), nil
		case "bytes":
			return base64.StdEncoding.DecodeString(raw.(string))
		case "timestamp":
			fields := raw.(map[string]any)
			secs, err := strconv.ParseInt(fields["seconds"].(string), 10, 64)
			if err != nil {
				return nil, err
			}
			return time.Unix(secs, int64(fields["nanos"].(float64))).UTC(), nil
		case "list":
			items := raw.([]any)
			if len(items) == 0 {
				return []any{}, nil
			}
			// A list keeps its element type: []int64, []float64 or []string.
			first, err := decode(items[0].(map[string]any))
			if err != nil {
				return nil, err
			}
			switch first.(type) {
			case int64:
				l := make([]int64, len(items))
				for i, x := range items {
					v, err := decode(x.(map[string]any))
					if err != nil {
						return nil, err
					}
					l[i] = v.(int64)
				}
				return l, nil
			case float64:
				l := make([]float64, len(items))
				for i, x := range items {
					v, err := decode(x.(map[string]any))
					if err != nil {
						return nil, err
					}
					l[i] = v.(float64)
				}
				return l, nil
			case string:
				l := make([]string, len(items))
				for i, x := range items {
					v, err := decode(x.(map[string]any))
					if err != nil {
						return nil, err
					}
					l[i] = v.(string)
				}
				return l, nil
			default:
				return nil, fmt.Errorf("lists of %T are not inputs", first)
			}
		}
		return nil, fmt.Errorf("unknown input tag %q", tag)
	}
	panic("unreachable")
}

func decodeDouble(raw any) (float64, error) {
	bits, err := strconv.ParseUint(raw.(string), 16, 64)
	if err != nil {
		return 0, err
	}
	return math.Float64frombits(bits), nil
}

// encode turns a cel-go result into its tagged form.
func encode(val ref.Val) any {
	switch v := val.(type) {
	case types.Int:
		return map[string]any{"int": strconv.FormatInt(int64(v), 10)}
	case types.Uint:
		return map[string]any{"uint": strconv.FormatUint(uint64(v), 10)}
	case types.Double:
		return map[string]any{"double": fmt.Sprintf("%016x", math.Float64bits(float64(v)))}
	case types.String:
		return map[string]any{"string": string(v)}
	case types.Bool:
		return map[string]any{"bool": bool(v)}
	case types.Bytes:
		return map[string]any{"bytes": base64.StdEncoding.EncodeToString([]byte(v))}
	case types.Timestamp:
		return map[string]any{"timestamp": map[string]any{
			"seconds": strconv.FormatInt(v.Unix(), 10),
			"nanos":   v.Nanosecond(),
		}}
	case types.Duration:
		d := v.Duration
		return map[string]any{"duration": map[string]any{
			"seconds": strconv.FormatInt(int64(d/time.Second), 10),
			"nanos":   int64(d % time.Second),
		}}
	case types.Null:
		return map[string]any{"null": true}
	case *types.Err:
		return map[string]any{"error": v.Error()}
	case traits.Lister:
		var items []any
		for it := v.Iterator(); it.HasNext() == types.True; {
			items = append(items, encode(it.Next()))
		}
		if items == nil {
			items = []any{}
		}
		return map[string]any{"list": items}
	default:
		return map[string]any{"other": fmt.Sprintf("%s: %v", val.Type().TypeName(), val.Value())}
	}
}
