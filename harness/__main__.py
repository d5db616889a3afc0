from diehardlab.cli import component_main

component_main("diehardlab.harness")
